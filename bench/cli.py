"""``tagsift bench ...``: the benchmarks' commands, a group that ``worker.cli`` finds through the
``tagsift.commands`` entry point (pyproject.toml) when this package is installed
(it is left out of the Docker images). Each command imports its benchmark inside, so ``--help`` stays light."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

bench = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)

# Options more than one bench takes, declared once.
Cifar10Path = Annotated[
    Path | None, typer.Option("--cifar10-path", help="CIFAR-10 JPEG archive (default TAGSIFT_CIFAR10_PATH).")
]
CacheDir = Annotated[Path | None, typer.Option("--cache-dir", help="Backbone cache (default TAGSIFT_MODEL_CACHE_DIR).")]
FeatureDir = Annotated[
    Path | None, typer.Option("--feature-dir", help="Feature cache (default <TAGSIFT_DATA_DIR>/features).")
]
ApiWorkers = Annotated[int, typer.Option("--api-workers", help="API processes (`tagsift serve --workers`).")]
DatabaseUrl = Annotated[str, typer.Option("--database-url", help="PostgreSQL URL (default: SQLite).")]
BrokerUrl = Annotated[str, typer.Option("--broker-url", help="Redis URL (default: SQLite broker).")]
Keep = Annotated[bool, typer.Option("--keep", help="Keep the temp data dir and logs.")]


def _data_paths(cifar10_path: Path | None, cache_dir: Path | None) -> tuple[Path, Path]:
    """The CIFAR-10 archive and the backbone cache: the options where given, else the settings."""
    from app.config import get_settings

    settings = get_settings()
    return cifar10_path or settings.cifar10_path, cache_dir or settings.model_cache_dir


@bench.command("train-speed")
def bench_train_speed(
    backbone: Annotated[str, typer.Option(help="Backbone spec, or 'reference'.")] = "reference",
    shots: Annotated[int, typer.Option(help="Training images per CIFAR-10 class.")] = 16,
    q: Annotated[float, typer.Option(help="Candidate-set flip rate.")] = 0.3,
    epochs: Annotated[int, typer.Option(help="Epochs of each run.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of shots, candidate sets, context init and batch order.")] = 1,
    method: Annotated[str, typer.Option(help="prompt_alignment or coop.")] = "prompt_alignment",
    loss: Annotated[str, typer.Option(help="PLL loss: naive, cc, rc, lws, cavl, plcr, pico.")] = "rc",
    cifar10_path: Cifar10Path = None,
    cache_dir: CacheDir = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    test_images: Annotated[int, typer.Option("--test-images", help="Test images for the accuracies.")] = 1000,
) -> None:
    """Train the same prompts with this trainer and with an official-style loop; print times and accuracies."""
    from bench.train_speed import run_cifar10_train_speed

    cifar, models = _data_paths(cifar10_path, cache_dir)
    run_cifar10_train_speed(
        backbone=backbone,
        cifar10_path=cifar,
        cache_dir=models,
        shots=shots,
        q=q,
        epochs=epochs,
        seed=seed,
        method=method,
        loss=loss,
        device=device,
        test_images=test_images,
        out=typer.echo,
    )


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.replace(",", " ").split()]


@bench.command("reproduce")
def bench_reproduce(
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="Small subset (q 0.3, seed 1, 5 methods, 2 epochs, 1,000 test images): under 5 minutes."
        ),
    ] = False,
    q: Annotated[str, typer.Option("--q", help="Partial rates, comma-separated.")] = "0.1,0.3,0.5,0.7",
    seeds: Annotated[str, typer.Option("--seeds", help="Seeds, comma-separated.")] = "1,2,3,4",
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs of the prompt methods (few-shot).")] = 100,
    lp_epochs: Annotated[int, typer.Option("--lp-epochs", help="Epochs of the linear probe.")] = 100,
    large_epochs: Annotated[int, typer.Option("--large-epochs", help="Epochs of the prompt methods (large).")] = 2,
    large_q: Annotated[str, typer.Option("--large-q", help="Partial rates of the large regime.")] = "0.3",
    large_seeds: Annotated[str, typer.Option("--large-seeds", help="Seeds of the large regime.")] = "1",
    methods: Annotated[str | None, typer.Option("--methods", help="Comma-separated method names.")] = None,
    regime: Annotated[str, typer.Option("--regime", help="fewshot | large | both")] = "fewshot",
    out: Annotated[Path, typer.Option("--out", help="Directory of the JSON results.")] = Path("bench-out"),
    cifar10_path: Cifar10Path = None,
    cache_dir: CacheDir = None,
    feature_dir: FeatureDir = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Skip cells already on disk.")] = True,
    test_cached_only: Annotated[
        bool,
        typer.Option(
            "--test-cached-only", help="Use only the test (and large-set) images already encoded; see --report-only."
        ),
    ] = False,
    report_only: Annotated[bool, typer.Option("--report-only", help="Only (re-evaluate and) report.")] = False,
    report: Annotated[Path, typer.Option("--report", help="Markdown report to write.")] = Path("docs/results.md"),
    threads: Annotated[int, typer.Option("--threads", help="torch CPU threads (0: torch default).")] = 0,
    dataset: Annotated[
        str, typer.Option("--dataset", help="cifar10, or digits (scikit-learn's; its large regime is the whole pool).")
    ] = "cifar10",
    candidates: Annotated[
        str,
        typer.Option(
            "--candidates",
            help="uniform (each wrong tag joins with probability q) or instance (confusable tags join more often,"
            " same expected set size; drawn from a confuser model trained on a disjoint split).",
        ),
    ] = "uniform",
) -> None:
    """Reproduce arXiv 2407.07638 on CIFAR-10 with the reference backbone (effnetlite0-minilm); see docs/results.md."""
    import subprocess as sp

    import torch

    from app.config import get_settings
    from bench import reproduce as R

    if threads:
        torch.set_num_threads(threads)
    settings = get_settings()
    out_dir = out / "quick" if quick else out
    png = report.with_name(report.stem + "-accuracy-vs-q.png")
    cifar, models = _data_paths(cifar10_path, cache_dir)
    feats = feature_dir or settings.data_dir / "features"

    def log(msg: str) -> None:
        typer.echo(msg)

    if report_only:
        if not test_cached_only:
            data = None
        else:  # fill in test accuracies of cells evaluated on fewer images, from the feature cache only
            data = R.load_bench_data(
                cifar,
                models,
                feats,
                seeds=[],
                regime="both",
                test_cached_only=True,
                dataset=dataset,
                protocol=candidates,
                log=log,
            )
            R.reevaluate(out_dir, data.test, log)
            R.posthoc_ensembles(out_dir, data, log)
        R.write_report(out_dir, report, png)
        typer.echo(f"wrote {report} and {png}")
        return
    try:
        commit = sp.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    cfg = R.GridConfig(
        out_dir=out_dir,
        qs=_floats(q),
        seeds=[int(s) for s in _floats(seeds)],
        epochs=epochs,
        lp_epochs=lp_epochs,
        large_epochs=large_epochs,
        large_qs=_floats(large_q),
        large_seeds=[int(s) for s in _floats(large_seeds)],
        methods=[m.strip() for m in methods.split(",")] if methods else None,
        regime=regime,
        resume=resume,
        commit=commit,
        extra={"command": " ".join(sys.argv[1:])},
    )
    if quick:
        cfg.qs, cfg.seeds, cfg.epochs, cfg.lp_epochs, cfg.regime = [0.3], [1], 2, 20, "fewshot"
        cfg.methods = cfg.methods or list(R.QUICK_METHODS)
    data = R.load_bench_data(
        cifar,
        models,
        feats,
        seeds=cfg.seeds,
        regime=cfg.regime,
        quick=quick,
        test_cached_only=test_cached_only,
        dataset=dataset,
        protocol=candidates,
        log=log,
    )
    R.run_grid(data, cfg, log)
    R.posthoc_ensembles(out_dir, data, log)
    R.write_report(
        out_dir,
        report if not quick else out_dir / "results.md",
        png if not quick else out_dir / "results-accuracy-vs-q.png",
    )


@bench.command("method-report")
def bench_method_report(
    run: Annotated[
        list[str],
        typer.Option("--run", help="TITLE=FOLDER: a `tagsift bench reproduce --out` folder; repeat for each run."),
    ],
    default: Annotated[str, typer.Option("--default", help="The method `auto` stands for (a reproduce method name).")],
    report: Annotated[Path, typer.Option("--report", help="Markdown file whose method-report block is rewritten.")] = (
        Path("docs/results.md")
    ),
) -> None:
    """The choice of the default method on validation, and the default against the baselines (docs/results.md)."""
    from bench.method_report import write_method_report

    runs = []
    for item in run:
        title, sep, folder = item.rpartition("=")
        if not sep or not title:
            raise typer.BadParameter(f"--run {item!r}: expected TITLE=FOLDER")
        runs.append((title, Path(folder)))
    write_method_report(runs, default, report)
    typer.echo(f"wrote {report}")


@bench.command("service")
def bench_service(
    images: Annotated[int, typer.Option("--images", help="CIFAR-10 photos to upload and train on.")] = 1000,
    upload_batch: Annotated[int, typer.Option("--upload-batch", help="Images per upload request.")] = 100,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs of the training job.")] = 3,
    views: Annotated[int, typer.Option("--views", help="Feature views per image.")] = 1,
    clients: Annotated[int, typer.Option("--clients", help="Concurrent /predict clients.")] = 4,
    requests: Annotated[int, typer.Option("--requests", help="/predict requests (1 image) per client.")] = 50,
    rounds: Annotated[int, typer.Option("--rounds", help="Alternating API / raw /predict rounds (medians).")] = 3,
    train_rounds: Annotated[
        int, typer.Option("--train-rounds", help="Alternating direct ml/ runs and jobs (the fastest of each).")
    ] = 3,
    api_workers: ApiWorkers = 1,
    backbone: Annotated[str, typer.Option("--backbone", help="Backbone spec, or 'reference'.")] = "reference",
    q: Annotated[float, typer.Option("--q", help="Candidate-set flip rate.")] = 0.3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the photos, candidate sets and training.")] = 1,
    database_url: DatabaseUrl = "",
    broker_url: BrokerUrl = "",
    cifar10_path: Cifar10Path = None,
    cache_dir: CacheDir = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N (worker and direct run).")] = "cpu",
    keep: Keep = False,
) -> None:
    """Upload, training and /predict through a real service it starts, against calling ml/ and ONNX Runtime."""
    from bench.service import ServiceBenchConfig, run_service_bench

    cifar, models = _data_paths(cifar10_path, cache_dir)
    cfg = ServiceBenchConfig(
        cifar10_path=cifar,
        cache_dir=models,
        backbone=backbone,
        images=images,
        upload_batch=upload_batch,
        q=q,
        seed=seed,
        epochs=epochs,
        views=views,
        clients=clients,
        requests=requests,
        rounds=rounds,
        train_rounds=train_rounds,
        api_workers=api_workers,
        database_url=database_url,
        broker_url=broker_url,
        device=device,
        keep=keep,
    )
    run_service_bench(cfg, out=typer.echo)


@bench.command("load")
def bench_load(
    clients: Annotated[int, typer.Option("--clients", help="Concurrent clients (one connection each).")] = 50,
    duration: Annotated[float, typer.Option("--duration", help="Seconds of load.")] = 60.0,
    batch: Annotated[int, typer.Option("--batch", help="Images per upload request.")] = 4,
    job_every: Annotated[
        int, typer.Option("--job-every", help="A client starts a zero_shot job every this many rounds.")
    ] = 10,
    api_workers: ApiWorkers = 1,
    backbone: Annotated[
        str, typer.Option("--backbone", help="'auto': reference when built in the cache dir, else a tiny model.")
    ] = "auto",
    database_url: DatabaseUrl = "",
    broker_url: BrokerUrl = "",
    request_timeout: Annotated[float, typer.Option("--request-timeout", help="Seconds per request.")] = 30.0,
    cache_dir: CacheDir = None,
    keep: Keep = False,
) -> None:
    """Concurrent clients upload, list, read labels, start and poll jobs on a service it starts; zero errors."""
    from bench.load import LoadBenchConfig, run_load_bench

    cfg = LoadBenchConfig(
        cache_dir=_data_paths(None, cache_dir)[1],
        clients=clients,
        duration=duration,
        batch=batch,
        job_every=job_every,
        backbone=backbone,
        api_workers=api_workers,
        database_url=database_url,
        broker_url=broker_url,
        request_timeout=request_timeout,
        keep=keep,
    )
    result = run_load_bench(cfg, out=typer.echo)
    if result.total_errors:
        raise typer.Exit(1)


@bench.command("scale")
def bench_scale(
    sizes: Annotated[
        str, typer.Option("--sizes", help="Dataset sizes, comma-separated, increasing.")
    ] = "1000,10000,100000",
    upload_batch: Annotated[int, typer.Option("--upload-batch", help="Items per upload request.")] = 1000,
    samples: Annotated[int, typer.Option("--samples", help="Requests per latency figure.")] = 200,
    database_url: Annotated[
        str, typer.Option("--database-url", help="PostgreSQL server (the bench creates and drops its own database).")
    ] = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    broker_url: BrokerUrl = "",
    cache_dir: CacheDir = None,
    keep: Keep = False,
    explain: Annotated[
        bool, typer.Option("--explain", help="Print EXPLAIN ANALYZE of the list and review queries at each size.")
    ] = False,
) -> None:
    """Upload, item, list, review, export and delete figures at growing dataset sizes on PostgreSQL."""
    from bench.scale import ScaleBenchConfig, run_scale_bench

    cfg = ScaleBenchConfig(
        sizes=[int(x) for x in sizes.replace(",", " ").split()],
        upload_batch=upload_batch,
        samples=samples,
        cache_dir=_data_paths(None, cache_dir)[1],
        broker_url=broker_url,
        keep=keep,
        explain=explain,
    )
    run_scale_bench(cfg, admin_url=database_url, out=typer.echo)


@bench.command("gpu")
def bench_gpu(
    device: Annotated[str, typer.Option("--device", help="cuda, cuda:N or cpu (default: cuda when present).")] = "",
    backbones: Annotated[
        str, typer.Option("--backbones", help="Backbone specs, comma-separated (default: reference, ViT-B-32 random).")
    ] = "reference,ViT-B-32",
    images: Annotated[int, typer.Option("--images", help="Generated images to encode, train on and predict.")] = 512,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs (the figure is the mean epoch).")] = 3,
    tiny: Annotated[bool, typer.Option("--tiny", help="A few images and one epoch: the CPU check CI runs.")] = False,
    cache_dir: CacheDir = None,
) -> None:
    """Encoding images/s, training epoch time and /predict throughput, fp32 and amp: one script for a GPU machine."""
    from bench.gpu import GpuBenchConfig, run_gpu_bench

    models = _data_paths(None, cache_dir)[1]
    cfg = GpuBenchConfig.tiny(models) if tiny else GpuBenchConfig(cache_dir=models, images=images, epochs=epochs)
    if device:
        cfg.device = device
    cfg.backbones = tuple(b for b in backbones.replace(",", " ").split())
    run_gpu_bench(cfg, out=typer.echo)


@bench.command("tower")
def bench_tower(
    backbone: Annotated[str, typer.Option("--backbone", help="Backbone spec, or 'reference'.")] = "reference",
    models: Annotated[int, typer.Option("--models", help="Models of the backbone stored and loaded.")] = 10,
    classes: Annotated[int, typer.Option("--classes", help="Classes of each model.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the models' class matrices.")] = 1,
    cache_dir: CacheDir = None,
) -> None:
    """Bytes stored per additional model and /predict memory with N models of one backbone: a shared image tower
    against one model.onnx per model."""
    from bench.tower import TowerBenchConfig, run_tower_bench

    cfg = TowerBenchConfig(
        backbone=backbone, cache_dir=_data_paths(None, cache_dir)[1], models=models, classes=classes, seed=seed
    )
    run_tower_bench(cfg, out=typer.echo)


@bench.command("ui")
def bench_ui(
    items: Annotated[int, typer.Option(help="Items on the review page.")] = 200,
    runs: Annotated[int, typer.Option(help="Timed page loads after the cold one.")] = 7,
    decisions: Annotated[int, typer.Option(help="Keyboard decisions timed.")] = 40,
    map_items: Annotated[int, typer.Option("--map-items", help="Items on the similarity map.")] = 10_000,
    map_runs: Annotated[int, typer.Option("--map-runs", help="Timed map loads (and lassos).")] = 3,
    cifar10_path: Cifar10Path = None,
) -> None:
    """The review page and the similarity map in Chromium: page ready, map ready, a lasso, key to stored decision."""
    from bench.ui import run_ui_bench

    run_ui_bench(
        cifar10_path=_data_paths(cifar10_path, None)[0],
        items=items,
        runs=runs,
        decisions=decisions,
        map_items=map_items,
        map_runs=map_runs,
        out=typer.echo,
    )


@bench.command("review")
def bench_review(
    per_class: Annotated[int, typer.Option("--per-class", help="CIFAR-10 train images per class.")] = 100,
    q: Annotated[float, typer.Option("--q", help="Candidate-set flip rate.")] = 0.3,
    budgets: Annotated[str, typer.Option("--budgets", help="Shares of the items reviewed per round.")] = "0.05,0.1,0.2",
    max_share: Annotated[float, typer.Option("--max-share", help="Stop once this share is reviewed.")] = 0.4,
    views: Annotated[int, typer.Option("--views", help="Feature views per image (the job's setting).")] = 2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the images, candidate sets, order and training.")] = 1,
    backbone: Annotated[str, typer.Option("--backbone", help="Backbone spec, or 'reference'.")] = "reference",
    cifar10_path: Cifar10Path = None,
    cache_dir: CacheDir = None,
    feature_dir: FeatureDir = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where review.json/.md/.png go.")] = Path("bench-out"),
    live: Annotated[bool, typer.Option("--live", help="Live refits every --every decisions against none.")] = False,
    qs: Annotated[str, typer.Option("--qs", help="--live: candidate-set flip rates.")] = "0.3,0.7",
    seeds: Annotated[str, typer.Option("--seeds", help="--live: seeds.")] = "1,2",
    every: Annotated[int, typer.Option("--every", help="--live: decisions between refits.")] = 10,
    latency_items: Annotated[
        str, typer.Option("--latency-items", help="--live: refit latency at these sizes (synthetic; '' skips).")
    ] = "10000,100000",
    latency_runs: Annotated[int, typer.Option("--latency-runs", help="--live: timed refits per size.")] = 5,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="--live: the job's epochs (default: its default).")
    ] = None,
) -> None:
    """Simulate a reviewer fixing the lowest-margin items round after round (vs random and zero-shot order); R95.
    With --live: a reviewer fixing items in queue order with refits every --every decisions against none, and the
    refit latency (docs/quality.md, Live refit)."""
    from app.config import get_settings
    from bench.review import run_cifar10

    settings = get_settings()
    cifar, models = _data_paths(cifar10_path, cache_dir)
    if live:
        from bench.live import run_latency, run_review

        if per_class:
            run_review(
                backbone=backbone,
                cifar10_path=cifar,
                cache_dir=models,
                feature_dir=feature_dir or settings.data_dir / "features",
                per_class=per_class,
                qs=_floats(qs),
                seeds=[int(x) for x in seeds.split(",") if x.strip()],
                every=every,
                max_share=max_share,
                epochs=epochs,
                out=typer.echo,
            )
        sizes = [int(x) for x in latency_items.split(",") if x.strip()]
        if sizes:
            run_latency(sizes, latency_runs, out=typer.echo)
        return
    command = "tagsift bench review " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else "tagsift bench review"
    report = run_cifar10(
        backbone=backbone,
        cifar10_path=cifar,
        cache_dir=models,
        feature_dir=feature_dir or settings.data_dir / "features",
        per_class=per_class,
        q=q,
        views=views,
        budgets=_floats(budgets),
        max_share=max_share,
        seed=seed,
        out_dir=out_dir,
        command=command,
        log=typer.echo,
    )
    typer.echo((out_dir / "review.md").read_text())
    typer.echo(f"{len(report['runs'])} simulations; files in {out_dir}")


@bench.command("encode")
def bench_encode(
    images: Annotated[int, typer.Option("--images", help="Images of the timed dataset.")] = 2000,
    raw_images: Annotated[
        int, typer.Option("--raw-images", help="Images of the raw backbone rate (pre-decoded, this process).")
    ] = 256,
    threads: Annotated[int, typer.Option("--threads", help="torch threads of each worker and of the raw rate.")] = 1,
    shard_images: Annotated[
        int | None, typer.Option("--shard-images", help="Images per shard (default TAGSIFT_ENCODE_SHARD_IMAGES).")
    ] = None,
    generated: Annotated[
        bool, typer.Option("--generated", help="Generated 32x32 JPEG images instead of CIFAR-10 photos.")
    ] = False,
    backbone: Annotated[str, typer.Option("--backbone", help="Backbone spec, or 'reference'.")] = "reference",
    api_workers: ApiWorkers = 1,
    database_url: DatabaseUrl = "",
    broker_url: BrokerUrl = "",
    cifar10_path: Cifar10Path = None,
    cache_dir: CacheDir = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N (workers and raw rate).")] = "cpu",
    keep: Keep = False,
    encoders: Annotated[
        bool, typer.Option("--encoders", help="In this process: torch vs ONNX Runtime worker rate vs raw tower.")
    ] = False,
    photo_size: Annotated[str, typer.Option("--photo-size", help="--encoders: upscale photos to WxH.")] = "",
) -> None:
    """A dataset's encoding on one worker and on two sharing its shards, and the backbone's raw rate."""
    from bench.encode import EncodeBenchConfig, run_encode_bench

    cifar, models = _data_paths(cifar10_path, cache_dir)
    if encoders:
        from bench.encode_rates import run_encoder_rates

        size = tuple(int(v) for v in photo_size.lower().split("x")) if photo_size else None
        run_encoder_rates(
            backbone_name=backbone, cache_dir=models, cifar10_path=cifar, images=images, size=size, threads=threads,
            out=typer.echo,
        )  # fmt: skip
        return
    cfg = EncodeBenchConfig(
        cache_dir=models,
        cifar10_path=None if generated else cifar,
        backbone=backbone,
        images=images,
        raw_images=raw_images,
        threads=threads,
        shard_images=shard_images,
        device=device,
        api_workers=api_workers,
        database_url=database_url,
        broker_url=broker_url,
        keep=keep,
    )
    run_encode_bench(cfg, out=typer.echo)


@bench.command("client")
def bench_client(
    images: Annotated[int, typer.Option("--images", help="CIFAR-10 test JPEGs to upload (at most 10,000).")] = 10_000,
    batch: Annotated[int, typer.Option("--batch", help="Images per request, both paths.")] = 1000,
    rounds: Annotated[int, typer.Option("--rounds", help="Uploads per path (alternating); the best of each.")] = 1,
    database_url: Annotated[
        str,
        typer.Option("--database-url", help="PostgreSQL server (a database of its own per upload); default SQLite."),
    ] = "",
    cifar10_path: Cifar10Path = None,
    keep: Keep = False,
) -> None:
    """Upload a folder of photos with the Python client and with the raw-HTTP path; print both rates."""
    from bench.client import ClientBenchConfig, run_client_bench

    cfg = ClientBenchConfig(images=images, batch=batch, rounds=rounds, database_url=database_url, keep=keep)
    run_client_bench(cfg, cifar10_path=_data_paths(cifar10_path, None)[0], out=typer.echo)


@bench.command("quality")
def bench_quality(
    per_class: Annotated[int, typer.Option("--per-class", help="Images per class of the split to label.")] = 100,
    split: Annotated[str, typer.Option("--split", help="CIFAR-10 split to label: test (reported) or train.")] = "test",
    qs: Annotated[str, typer.Option("--q", help="Candidate-set flip rates, comma-separated.")] = "0.3,0.7",
    seeds: Annotated[str, typer.Option("--seeds", help="Seeds (candidate sets, audit, training).")] = "1,2",
    methods: Annotated[str, typer.Option("--methods", help="Methods, comma-separated.")] = "aligned_head,linear_probe",
    audits: Annotated[str, typer.Option("--audits", help="Audit sizes (0: no audit).")] = "0,50",
    threads: Annotated[int, typer.Option("--threads", help="torch threads (1 is fastest on a loaded machine).")] = 1,
    backbone: Annotated[str, typer.Option("--backbone", help="Backbone spec, or 'reference'.")] = "reference",
    cifar10_path: Cifar10Path = None,
    cache_dir: CacheDir = None,
    feature_dir: FeatureDir = None,
) -> None:
    """How close ml.quality's accuracy figure lands to the truth, with and without an audit (docs/quality.md)."""
    import torch

    from app.config import get_settings
    from bench.quality import run_cifar10

    torch.set_num_threads(threads)
    cifar, models = _data_paths(cifar10_path, cache_dir)
    run_cifar10(
        backbone=backbone,
        cifar10_path=cifar,
        cache_dir=models,
        feature_dir=feature_dir or get_settings().data_dir / "features",
        split=split,
        per_class=per_class,
        qs=_floats(qs),
        seeds=[int(s) for s in seeds.split(",")],
        methods=methods.split(","),
        audits=[int(a) for a in audits.split(",")],
        log=typer.echo,
    )
