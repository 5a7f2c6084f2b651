"""The model card's label-quality section and metrics: words and Markdown tables, never a JSON dump."""

from __future__ import annotations

from tests.app.quality_reports import LEGACY, V2
from worker.model_card import _table, quality_lines


def _rows(lines: list[str], heading: str) -> list[list[str]]:
    """The body rows of the table under ``heading``."""
    start = lines.index(heading)
    table = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip("|").split(" | ")])
    return table[2:]


def test_version_2_report_in_words_and_tables() -> None:
    lines = quality_lines(V2)
    text = "\n".join(lines)
    assert "- Estimated share of correct labels: **81.2 %** (95% interval 70.1 % to 89.0 %): measured on 64" in text
    assert f"- Next: {V2['next_step']}" in lines
    per_tag = _rows(lines, "### Estimated accuracy per tag (the weakest first)")
    assert per_tag == [
        ["lynx", "64.0 %", "40", "9"],
        ["cat", "71.0 %", "120", "20"],
        ["dog", "86.0 %", "100", "18"],
        ["owl", "95.0 %", "60", "17"],
    ]
    assert _rows(lines, "### Tags the model confuses most within candidate sets")[0] == ["cat and lynx", "31", "42.0 %"]
    epochs = _rows(lines, "### Training by epoch")
    assert [r[0] for r in epochs] == ["1", "2", "3"] and epochs[2][3:] == ["8.0 %", "78.0 %"]
    assert "{" not in text and "```" not in text


def test_legacy_report_and_no_report() -> None:
    text = "\n".join(quality_lines(LEGACY))
    assert "**85.3 %**: estimated from the model's own confidence: not yet measured" in text
    assert "{" not in text and "per tag" not in text
    assert quality_lines(None) == [] and quality_lines({}) == []


def test_table_cells_escape_pipes() -> None:
    assert _table(["a"], [["x|y"]]) == ["| a |", "|---|", "| x\\|y |", ""]
