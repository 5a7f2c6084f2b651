"""`tagsift bench scale` in small: a real subprocess that starts its own API on a PostgreSQL database it creates.

Two tiny sizes: every figure is printed for each (and, with ``--explain``, the query plans of the list and review
pages), the dataset holds exactly the uploaded items, the bench's database is dropped afterwards, and the last line
has the exact summary format with the ratios it computed.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.worker.conftest import TAGSIFT

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(
    r"^scale items=60\.\.150 upload_rate_ratio=(?P<up>[\d.]+) list_p99_ratio=(?P<list>[\d.]+)"
    r" review_p99_ratio=(?P<review>[\d.]+) export_rss_ratio=(?P<rss>[\d.]+)$"
)


def _bench_databases(admin_url: str) -> set[str]:
    engine = create_engine(admin_url)
    with engine.connect() as conn:
        names = set(conn.scalars(text("SELECT datname FROM pg_database WHERE datname LIKE 'tagsift_bench_scale_%'")))
    engine.dispose()
    return names


def test_bench_scale_postgres(pg_admin_url) -> None:
    admin = make_url(pg_admin_url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    before = _bench_databases(admin)
    proc = subprocess.run(
        [str(TAGSIFT), "bench", "scale", "--sizes", "60,150", "--samples", "5", "--upload-batch", "40",
         "--database-url", admin, "--explain"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    for n in (60, 150):
        assert f"  {n} items uploaded in " in out, out
        assert re.search(rf"^size {n}: upload [\d.]+ items/s, delete [\d.]+ s$", out, re.MULTILINE), out
    for label in ("GET item", "list first page", "review first page"):
        assert len(re.findall(rf"^  {label} +p50 +[\d.]+ p99 +[\d.]+ ms", out, re.MULTILINE)) == 2, (label, out)
    assert len(re.findall(r"deep cursor p50 +[\d.]+ p99 +[\d.]+ ms", out)) == 4, out
    for fmt in ("json", "jsonl", "csv"):
        assert len(re.findall(rf"^  export {fmt}: [\d.]+ MB in [\d.]+ s, peak RSS \d+ MB$", out, re.MULTILINE)) == 2
    for title in ("list first page", "list deep cursor", "review first page", "review deep cursor"):
        assert len(re.findall(rf"^  plan {title}: SELECT ", out, re.MULTILINE)) == 2, (title, out)
    # the totals are the dataset's counts, read with its row by primary key: no count(*) of its items
    totals = re.findall(r"^  plan totals \(the dataset's row\): (SELECT .*)$", out, re.MULTILINE)
    assert len(totals) == 2 and all("count(" not in t and "FROM datasets" in t for t in totals), out
    assert "count(*)" not in out.lower(), out
    assert len(re.findall(r"^    Execution Time: [\d.]+ ms$", out, re.MULTILINE)) == 10, out
    last = out.strip().splitlines()[-1]
    summary = SUMMARY.match(last)
    assert summary, last
    assert all(float(summary[k]) > 0 for k in ("up", "list", "review", "rss")), last
    assert _bench_databases(admin) == before  # its database was dropped
