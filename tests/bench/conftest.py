"""The tiny random-init backbones of tests/ml, for the benchmark tests."""

from tests.ml.conftest import tiny_configs, tiny_hf, tiny_native  # noqa: F401 - fixtures
