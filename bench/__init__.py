"""Benchmarks of the ml/ library: plain arguments in, printed figures and dataclasses out."""
