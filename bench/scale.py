"""``tagsift bench scale``: how the API's per-item costs grow with the dataset, on PostgreSQL.

For each size (default 1,000, 10,000 and 100,000 items) it makes a fresh dataset on a service of its own
(``tagsift serve`` on a free loopback port, a PostgreSQL database it creates and drops, no worker) and prints:

- **upload**: items/s of ``POST /datasets/{id}/items`` in batches (distinct 8x8 generated PNGs: the API-side costs
  do not depend on the images being photos);
- **item**: ``GET /items/{id}`` p50/p99 over random items;
- **list** (``order=upload``) and **review** (``needs_review=true&order=margin``) pages: p50/p99 at the first page
  and at a deep cursor (reached by walking the listing to ~90% of its length);
- **export**: ``GET /datasets/{id}/labels`` as json, jsonl and csv: seconds, and the API process's peak RSS during
  it (``VmHWM`` after resetting it through ``/proc/<pid>/clear_refs``; Linux, as root or as the process's user);
- **delete**: ``DELETE /datasets/{id}`` seconds;
- with ``--explain``: PostgreSQL's ``EXPLAIN ANALYZE`` of the queries behind the list and review pages (the page at
  the first page and at the deep cursor, and the read of the dataset's row that gives every page its ``total``), as
  the API builds them (``app.services.items``), with the indexes they use.

No job runs (encoding 10^5 images is not what this measures): after the upload the bench writes a model-like
state straight into the database (a label, a uniform random margin, ``needs_review`` on the items whose margin
falls in the lowest ``REVIEW_SHARE``), so the review queue holds ~20% of the items, as it might after a job, then
``VACUUM ANALYZE items`` (what autovacuum does a minute after such a bulk update; done at once so that it does not
run at a random moment during the measurements).

The last line is exactly ``scale items=A..B upload_rate_ratio=R list_p99_ratio=R review_p99_ratio=R
export_rss_ratio=R``, each the figure at the largest size over the figure at the smallest (list and review: the
deep-cursor p99; export RSS: the API process's peak RSS over the three formats).
"""

from __future__ import annotations

import io
import json
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.service import ServiceOptions, _http_ok, _Service, free_port, percentile, service_env

CLASSES = [f"class{i:02d}" for i in range(10)]
REVIEW_SHARE = 0.2  # margins are uniform in [0, 1): needs_review for margin < 0.2 is ~20% of the items
FORMATS = ("json", "jsonl", "csv")


@dataclass(kw_only=True)
class ScaleBenchConfig(ServiceOptions):
    sizes: list[int] = field(default_factory=lambda: [1_000, 10_000, 100_000])
    upload_batch: int = 1_000  # items per upload request
    samples: int = 200  # requests per latency figure
    page_limit: int = 100  # items per list/review page
    seed: int = 1
    cache_dir: Path = Path("var/models")  # unused by the API-only service, but its settings need one
    explain: bool = False  # print EXPLAIN ANALYZE of the list and review queries at each size


@dataclass
class SizeFigures:
    items: int
    upload_items_per_s: float
    item_ms: tuple[float, float]  # p50, p99
    list_first_ms: tuple[float, float]
    list_deep_ms: tuple[float, float]
    review_first_ms: tuple[float, float]
    review_deep_ms: tuple[float, float]
    export_s: dict[str, float]
    export_peak_mb: dict[str, float]
    rss_before_mb: float
    delete_s: float

    @property
    def export_peak_rss_mb(self) -> float:
        """The API process's peak RSS over the three exports."""
        return max(self.export_peak_mb.values())


def tiny_png(index: int) -> bytes:
    """A distinct 8x8 RGB PNG for every ``index`` < 2**24 (a dataset keeps one item per distinct image)."""
    from PIL import Image

    img = Image.new("RGB", (8, 8), (index & 255, (index >> 8) & 255, (index >> 16) & 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _rss_mb(pid: int, field_name: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no {field_name}")


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _latencies(call: Callable[[], None], n: int) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return 1000 * percentile(times, 50), 1000 * percentile(times, 99)


def _get_ok(client, url: str, **params) -> dict:
    res = client.get(url, params=params)
    if res.status_code != 200:
        raise RuntimeError(f"GET {url} {params}: HTTP {res.status_code}: {res.text[:500]}")
    return res.json()


def _deep_cursor(client, url: str, total: int, params: dict, page_max: int) -> str:
    """Walk the listing and return a cursor at ~90% of its ``total`` items (a page of items follows it)."""
    step = max(1, min(page_max, total // 10))  # at most ~10% per page, so the walk stops before the end
    seen, cursor = 0, None
    while seen + step <= 0.9 * total or cursor is None:
        page = _get_ok(client, url, limit=step, **params, **({"cursor": cursor} if cursor else {}))
        if not page.get("next_cursor"):
            break
        seen += len(page["data"])
        cursor = page["next_cursor"]
    if cursor is None:
        raise RuntimeError(f"{url} {params}: fewer than two pages of {step} items; no deep cursor")
    return cursor


def fake_model_state(database_url: str, dataset_id: str, review_share: float, seed: int) -> int:
    """A label, a random margin and ``needs_review`` on every item, as a job would leave them; returns how many
    need review."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("SELECT setseed(:s)"), {"s": (seed % 1000) / 1000})
        conn.execute(
            text(
                "UPDATE items SET label = candidates->>0, label_source = 'model', margin = random(),"
                " confidence = 0.5 WHERE dataset_id = :d"
            ),
            {"d": dataset_id},
        )
        conn.execute(
            text("UPDATE items SET needs_review = (margin < :m) WHERE dataset_id = :d"),
            {"d": dataset_id, "m": review_share},
        )
        n = conn.execute(
            text("SELECT count(*) FROM items WHERE dataset_id = :d AND needs_review"), {"d": dataset_id}
        ).scalar_one()
        # what a job's save does after its bulk write (worker.job_rows): the review queue's total on the dataset
        conn.execute(text("UPDATE datasets SET review_count = :n WHERE id = :d"), {"n": n, "d": dataset_id})
    # the table as autovacuum leaves it a minute after a job's bulk update (visibility map set, statistics fresh),
    # now rather than at a random moment during the measurements
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE items"))
    engine.dispose()
    return int(n)


def explain_plans(database_url: str, dataset_id: str, limit: int, cursors: dict[str, str]) -> list[str]:
    """``EXPLAIN ANALYZE`` of the list and review pages' queries, built by ``app.services.items`` exactly as a
    request builds them (same statements, same bound parameters); ``cursors`` holds the deep ``list`` and
    ``review`` cursors."""
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from app.models import Dataset
    from app.services.items import cursor_position, page_statement

    queries = [
        ("list first page", None, "upload", None),
        ("list deep cursor", None, "upload", cursors["list"]),
        ("review first page", True, "margin", None),
        ("review deep cursor", True, "margin", cursors["review"]),
        # every page's ``total`` (list and review queue): the dataset's counts, read with its row by primary key
        ("totals (the dataset's row)", None, "upload", "totals"),
    ]
    engine = create_engine(database_url)
    out = []
    try:
        with Session(engine) as session:
            for title, needs_review, order, cursor in queries:
                if cursor == "totals":
                    stmt = select(Dataset.item_count, Dataset.review_count).where(Dataset.id == dataset_id)
                else:
                    after = cursor_position(session, dataset_id, order, cursor) if cursor else None
                    stmt = page_statement(dataset_id, needs_review=needs_review, order=order, after=after)
                    stmt = stmt.limit(limit + 1)
                compiled = stmt.compile(dialect=engine.dialect)
                plan = session.connection().exec_driver_sql(f"EXPLAIN ANALYZE {compiled}", compiled.params).scalars()
                out.append(f"  plan {title}: {' '.join(str(compiled).split())}  {compiled.params}")
                out += [f"    {line}" for line in plan]
    finally:
        engine.dispose()
    return out


def _upload(client, dataset_id: str, n: int, batch: int, seed: int) -> float:
    rng = random.Random(seed)
    started = time.perf_counter()
    for lo in range(0, n, batch):
        idx = range(lo, min(lo + batch, n))
        rows = []
        files = []
        for i in idx:
            k = rng.randint(1, 3)
            rows.append(json.dumps({"file": f"img{i:07d}.png", "candidates": rng.sample(CLASSES, k)}))
            files.append(("images", (f"img{i:07d}.png", tiny_png(i), "image/png")))
        manifest = ("\n".join(rows) + "\n").encode()
        res = client.post(
            f"/datasets/{dataset_id}/items",
            files=[("manifest", ("manifest.jsonl", manifest, "application/x-ndjson")), *files],
        )
        if res.status_code != 201:
            raise RuntimeError(f"upload batch at {lo}: HTTP {res.status_code}: {res.text[:1000]}")
    return time.perf_counter() - started


def measure_size(client, service: _Service, cfg: ScaleBenchConfig, database_url: str, n: int, out) -> SizeFigures:
    res = client.post("/datasets", json={"name": f"scale-{n}", "classes": CLASSES})
    if res.status_code != 201:
        raise RuntimeError(f"POST /datasets: HTTP {res.status_code}: {res.text[:500]}")
    dataset_id = res.json()["id"]
    upload_s = _upload(client, dataset_id, n, cfg.upload_batch, cfg.seed)
    stored = _get_ok(client, f"/datasets/{dataset_id}")["item_count"]
    if stored != n:
        raise RuntimeError(f"the dataset holds {stored} items after uploading {n}")
    review_n = fake_model_state(database_url, dataset_id, REVIEW_SHARE, cfg.seed)
    out(f"  {n} items uploaded in {upload_s:.1f} s; {review_n} need review")

    items_url = f"/datasets/{dataset_id}/items"
    ids = [row["id"] for row in _get_ok(client, items_url, limit=min(n, 1000))["data"]]
    rng = random.Random(cfg.seed)
    item_ms = _latencies(lambda: _get_ok(client, f"/items/{rng.choice(ids)}"), cfg.samples)

    page_max = 1000
    review = {"needs_review": "true", "order": "margin"}
    list_first = _latencies(lambda: _get_ok(client, items_url, limit=cfg.page_limit), cfg.samples)
    deep = _deep_cursor(client, items_url, n, {}, page_max)
    list_deep = _latencies(lambda: _get_ok(client, items_url, limit=cfg.page_limit, cursor=deep), cfg.samples)
    review_first = _latencies(lambda: _get_ok(client, items_url, limit=cfg.page_limit, **review), cfg.samples)
    deep_r = _deep_cursor(client, items_url, review_n, review, page_max)
    review_deep = _latencies(
        lambda: _get_ok(client, items_url, limit=cfg.page_limit, cursor=deep_r, **review), cfg.samples
    )
    if cfg.explain:
        for line in explain_plans(database_url, dataset_id, cfg.page_limit, {"list": deep, "review": deep_r}):
            out(line)

    pid = service.pid("api")
    rss_before = _rss_mb(pid, "VmRSS")
    export_s, export_peak = {}, {}
    for fmt in FORMATS:
        _reset_peak(pid)
        t0 = time.perf_counter()
        size = 0
        with client.stream("GET", f"/datasets/{dataset_id}/labels", params={"format": fmt}) as res:
            if res.status_code != 200:
                raise RuntimeError(f"labels {fmt}: HTTP {res.status_code}")
            for chunk in res.iter_bytes():
                size += len(chunk)
        export_s[fmt] = time.perf_counter() - t0
        export_peak[fmt] = _rss_mb(pid, "VmHWM")
        out(f"  export {fmt}: {size / 1e6:.1f} MB in {export_s[fmt]:.2f} s, peak RSS {export_peak[fmt]:.0f} MB")

    t0 = time.perf_counter()
    res = client.delete(f"/datasets/{dataset_id}")
    if res.status_code != 204:
        raise RuntimeError(f"DELETE dataset: HTTP {res.status_code}: {res.text[:500]}")
    delete_s = time.perf_counter() - t0
    return SizeFigures(
        n,
        n / upload_s,
        item_ms,
        list_first,
        list_deep,
        review_first,
        review_deep,
        export_s,
        export_peak,
        rss_before,
        delete_s,
    )


def format_size(f: SizeFigures) -> list[str]:
    def pp(ms: tuple[float, float]) -> str:
        return f"p50 {ms[0]:7.1f} p99 {ms[1]:7.1f} ms"

    exports = "  ".join(f"{fmt} {f.export_s[fmt]:.2f} s / {f.export_peak_mb[fmt]:.0f} MB" for fmt in FORMATS)
    return [
        f"size {f.items}: upload {f.upload_items_per_s:.0f} items/s, delete {f.delete_s:.2f} s",
        f"  GET item           {pp(f.item_ms)}",
        f"  list first page    {pp(f.list_first_ms)}   deep cursor {pp(f.list_deep_ms)}",
        f"  review first page  {pp(f.review_first_ms)}   deep cursor {pp(f.review_deep_ms)}",
        f"  export (time / peak RSS; {f.rss_before_mb:.0f} MB before): {exports}",
    ]


def summary_line(figs: list[SizeFigures]) -> str:
    lo, hi = figs[0], figs[-1]
    return (
        f"scale items={lo.items}..{hi.items}"
        f" upload_rate_ratio={hi.upload_items_per_s / lo.upload_items_per_s:.2f}"
        f" list_p99_ratio={hi.list_deep_ms[1] / lo.list_deep_ms[1]:.2f}"
        f" review_p99_ratio={hi.review_deep_ms[1] / lo.review_deep_ms[1]:.2f}"
        f" export_rss_ratio={hi.export_peak_rss_mb / lo.export_peak_rss_mb:.2f}"
    )


def fresh_database(admin_url: str, prefix: str = "tagsift_bench_scale") -> tuple[str, Callable[[], None]]:
    """A fresh database on the server of ``admin_url``; returns its URL and a function that drops it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), drop


def run_scale_bench(cfg: ScaleBenchConfig, *, admin_url: str, out: Callable[[str], None] = print) -> list[SizeFigures]:
    """Run every size on a fresh PostgreSQL database of its own; print the figures and the summary line (last)."""
    import httpx

    if not admin_url.startswith("postgresql"):
        raise ValueError("database_url: the scale bench measures PostgreSQL; give a postgresql+psycopg:// URL")
    if sorted(cfg.sizes) != cfg.sizes or len(cfg.sizes) < 2 or cfg.sizes[0] < 1:
        raise ValueError("sizes: at least two increasing sizes")
    database_url, drop = fresh_database(admin_url)
    work = Path(tempfile.mkdtemp(prefix="tagsift-bench-scale-"))
    env = service_env(
        work / "var",
        backbone="reference",
        cache_dir=cfg.cache_dir,
        device="cpu",
        views=1,
        queue_prefix="bench-scale",
        database_url=database_url,
        broker_url=cfg.broker_url,
        TAGSIFT_MAX_ITEMS_PER_REQUEST=str(max(50_000, cfg.upload_batch)),
    )
    service = _Service(env, work, free_port())
    figs: list[SizeFigures] = []
    try:
        service.run("migrate")
        key = service.run("create-api-key", "--owner", "scale").strip().splitlines()[-1]
        service.start("api", "serve", "--port", str(service.port), "--workers", "1")
        service.wait_until(lambda: _http_ok(f"{service.base_url}/healthz"), 90, "the API")
        out(f"bench scale: sizes {cfg.sizes}, PostgreSQL, batches of {cfg.upload_batch}, {cfg.samples} samples")
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=service.base_url, headers=headers, timeout=600) as client:
            for n in cfg.sizes:
                fig = measure_size(client, service, cfg, database_url, n, out)
                for line in format_size(fig):
                    out(line)
                figs.append(fig)
        ratios = {
            "upload rate": [f.upload_items_per_s for f in figs],
            "item p99": [f.item_ms[1] for f in figs],
            "list deep p99": [f.list_deep_ms[1] for f in figs],
            "review deep p99": [f.review_deep_ms[1] for f in figs],
            "export json s": [f.export_s["json"] for f in figs],
            "export peak RSS": [f.export_peak_rss_mb for f in figs],
            "delete s": [f.delete_s for f in figs],
        }
        out("growth, largest over smallest: " + ", ".join(f"{k} {v[-1] / v[0]:.2f}" for k, v in ratios.items()))
        out(summary_line(figs))
    finally:
        service.stop()
        drop()
        if not cfg.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    return figs
