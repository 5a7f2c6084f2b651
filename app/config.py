"""The one settings module: every ``TAGSIFT_*`` environment variable is read here and nowhere else.

Other packages read configuration through :func:`get_settings`; ``ml/`` never does (the worker passes
plain values into it).
"""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The backbone name that selects the offline reference dual encoder (EfficientNet-Lite0 + MiniLM).
REFERENCE_BACKBONE = "reference"

#: Width of the tag columns (``items.label``, ``items.given_label``): the largest ``max_tag_length`` allowed.
MAX_TAG_COLUMN = 200


class Settings(BaseSettings):
    """tagsift configuration. Each field is read from ``TAGSIFT_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="TAGSIFT_", env_file=None, extra="ignore")

    # --- storage -------------------------------------------------------------------------------
    data_dir: Path = Field(Path("./var"), description="Images, artifacts, feature cache, SQLite files.")
    storage_url: str = Field(
        "",
        description="Where images, model artifacts, checkpoints and the feature cache live: file://<dir> or"
        " s3://<bucket>/<prefix> (credentials: the standard AWS_* variables); empty: file://<data_dir>.",
    )
    s3_endpoint_url: str = Field(
        "", description="S3 API endpoint of a non-AWS object store (SeaweedFS, MinIO, Ceph); empty: AWS S3."
    )
    storage_cache_bytes: int = Field(
        20 * 1024**3,
        ge=0,
        description="s3:// storage only: most bytes of downloaded images and features a worker keeps on its disk"
        " under <data_dir>/cache (least recently used files go first).",
    )
    database_url: str = Field("", description="SQLAlchemy URL; empty: SQLite file <data_dir>/tagsift.db.")
    broker_url: str = Field(
        "", description="Celery broker URL; empty: an embedded SQLite broker <data_dir>/broker.sqlite."
    )
    queue: str = Field(
        "tagsift",
        description="Celery queue of jobs any worker may run (device 'auto'); every worker consumes it.",
    )
    cpu_queue: str = Field(
        "",
        description="Queue of jobs asked to run on a CPU (only CPU workers consume it); empty: '<TAGSIFT_QUEUE>.cpu'.",
    )
    gpu_queue: str = Field(
        "",
        description="Queue of jobs asked to run on a GPU (only GPU workers consume it); empty: '<TAGSIFT_QUEUE>.gpu'.",
    )
    live_queue: str = Field(
        "",
        description="Queue of live refits after review decisions (short tasks; `tagsift worker` starts a light process"
        " that consumes only it, beside its training pool); empty: '<TAGSIFT_QUEUE>.live'.",
    )
    live_refit: bool = Field(
        True,
        description="Every review decision schedules a refit of the dataset's latest model on its cached features"
        " (docs/architecture.md, Live refit); false: labels change only when a job runs.",
    )
    live_worker: bool = Field(
        True, description="`tagsift worker` also starts the live refit process (false: run `tagsift live-worker`)."
    )
    refit_lost_seconds: float = Field(
        600.0, description="A refit queued or running this long is taken as lost (its worker died): a new one runs."
    )
    job_device: Literal["auto", "cpu", "gpu"] = Field(
        "auto",
        description="Device of a job whose request leaves `device` out: 'auto' (TAGSIFT_QUEUE, any worker), 'cpu'"
        " (TAGSIFT_CPU_QUEUE) or 'gpu' (TAGSIFT_GPU_QUEUE).",
    )
    broker_poll_seconds: float = Field(
        0.1,
        gt=0,
        le=60,
        description="Embedded (SQLite) broker only: how often an idle worker asks it for a job (kombu's default: 1 s).",
    )

    # --- model ---------------------------------------------------------------------------------
    backbone: str = Field(
        "ViT-B-32:laion2b_s34b_b79k",
        description="open_clip '<model>:<pretrained tag or checkpoint path>', or 'reference'.",
    )
    device: str = Field(
        "auto",
        description="The worker's torch device: 'auto' (CUDA when usable), 'cpu', 'cuda' or 'cuda:N'. It also makes it"
        " a CPU or a GPU worker (which queues it consumes) unless `tagsift worker --device` says.",
    )
    model_cache_dir: Path | None = Field(
        None,
        description="Every backbone's weights: built, downloaded (open_clip, Hugging Face hub) or installed;"
        " empty: <data_dir>/models.",
    )
    offline: bool = Field(
        False,
        description="Never download backbone weights: load them from TAGSIFT_MODEL_CACHE_DIR only (air-gapped sites;"
        " `tagsift weights install` puts them there).",
    )
    cifar10_path: Path = Field(
        Path("../shared/data/cifar10-jpg.tar.gz"), description="CIFAR-10 JPEG archive (tests, benchmarks)."
    )

    # --- API -----------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address `tagsift serve` binds.")
    port: int = Field(8000, description="Port `tagsift serve` binds.")
    public_url: str = Field("", description="External base URL used in links; empty: relative links.")
    secret_keys: str = Field(
        "",
        description="Keys that encrypt webhook secrets at rest, comma-separated, newest first (each at least 32"
        " characters: `openssl rand -hex 32`); empty: stored in plain text. Rotation: docs/reliability.md.",
    )
    lookup_cache_seconds: float = Field(
        10.0,
        description="How long an API process reuses an API key's owner and, for /predict, a model's record (a"
        " revoked key or a deleted model stops working within this); 0: look them up on every request.",
    )

    # --- limits --------------------------------------------------------------------------------
    max_request_bytes: int = Field(512 * 1024 * 1024, description="Largest accepted request body.")
    request_body_timeout_seconds: float = Field(
        30.0,
        ge=0,
        description="Longest pause while a request body arrives (a body shorter than its Content-Length, a stalled"
        " client): then 408 and the connection is closed; 0: no limit.",
    )
    max_image_bytes: int = Field(32 * 1024 * 1024, description="Largest accepted single image file.")
    max_image_pixels: int = Field(40_000_000, description="Largest accepted image (width x height).")
    max_archive_members: int = Field(100_000, description="Most files in one uploaded zip.")
    max_archive_ratio: int = Field(200, description="Largest compression ratio accepted for a zip member.")
    max_items_per_request: int = Field(50_000, description="Most items in one upload.")
    max_tag_length: int = Field(200, description="Longest tag (class name), in characters; at most 200 (the column).")
    max_classes: int = Field(10_000, description="Most classes in one dataset.")
    max_archive_bytes: int = Field(
        2 * 1024 * 1024 * 1024, description="Largest total uncompressed size of the files in one uploaded zip."
    )
    max_manifest_bytes: int = Field(64 * 1024 * 1024, description="Largest manifest (JSONL or CSV) in one upload.")
    max_predict_images: int = Field(64, description="Most images in one POST /predict.")
    page_limit_default: int = Field(100, description="Page size of list endpoints when `limit` is not given.")
    page_limit_max: int = Field(1000, description="Largest `limit` accepted by list endpoints.")

    # --- predict (ONNX Runtime in the API process) ----------------------------------------------
    predict_cache_size: int = Field(
        4,
        description="ONNX Runtime sessions kept in memory (LRU): one per image tower, shared by every model of its"
        " backbone (one per model for models stored before towers were shared).",
    )
    predict_head_cache_size: int = Field(
        256, description="Models whose head, classes and preprocessing /predict keeps in memory (LRU)."
    )
    predict_threads: int = Field(0, description="ONNX Runtime intra-op threads per session; 0: its default.")
    predict_spinning: bool = Field(
        False,
        description="Let ONNX Runtime's idle intra-op threads spin (its default) instead of sleeping: a little"
        " lower latency on an idle machine, CPU taken from request handling under load.",
    )
    predict_batch_size: int = Field(16, description="Images per ONNX Runtime call in /predict.")
    predict_memory_bytes: int = Field(
        320 * 1024**2,
        ge=1,
        description="Most memory one image of a /predict or Label Studio predict request may take decoded (images are"
        " decoded one at a time, once per content); an image over it is a 422 naming it.",
    )

    # --- review -------------------------------------------------------------------------------
    review_confidence: float = Field(
        0.9,
        ge=0,
        le=1,
        description="An item whose calibrated confidence (probability its tag is right) is below this needs review.",
    )
    session_hours: float = Field(12.0, gt=0, le=24 * 90, description="How long a web app sign-in lasts.")

    # --- Label Studio (ML backend at /label-studio/{dataset_id}; docs/integrations.md) ---------------
    label_studio_url: str = Field(
        "",
        description="Base URL of the Label Studio whose task images the ML backend may fetch (when a task's image is"
        " not one of the dataset's items); empty: never fetch, only the dataset's own images are predicted.",
    )
    label_studio_token: str = Field(
        "",
        description="Label Studio API token (sent as `Authorization: Token ...`) for those fetches; empty: the"
        " `access_token` Label Studio sends to /setup, if its `hostname` is TAGSIFT_LABEL_STUDIO_URL.",
    )

    # --- jobs ----------------------------------------------------------------------------------
    job_max_attempts: int = Field(2, description="Runs of one job (first + re-runs after a lost worker).")
    job_lease_seconds: int = Field(120, description="A running job whose heartbeat is older is re-run.")
    job_heartbeat_seconds: int = Field(15, description="How often a running job renews its lease.")
    broker_visibility_timeout: int = Field(
        7 * 24 * 3600, description="Redis visibility timeout (s); must exceed the longest job."
    )
    worker_concurrency: int = Field(1, description="Jobs one worker process runs at once.")
    job_cancel_poll_seconds: float = Field(
        2.0, description="How often a running job reads its cancel flag (cancel latency, between steps)."
    )
    job_reap_interval_seconds: float = Field(
        30.0, description="How often each worker looks for jobs whose runner died (expired lease) to re-enqueue."
    )
    job_requeue_after_seconds: float = Field(
        300.0, description="A queued job untouched this long is enqueued again (its message may be lost)."
    )
    train_views: int = Field(
        2, description="Feature views per image for training (1 = eval transform only; more = augmented views)."
    )
    encode_shard_images: int = Field(
        128,
        ge=0,
        description="Images per encoding shard: a job with more images to encode than this splits them into shards"
        " that every free worker of the job's queue encodes (the job's own worker too), then trains on the merged"
        " features (docs/architecture.md, Encoding over workers); 0: the job's worker encodes them all itself.",
    )
    encode_batch_size: int = Field(
        64, ge=1, le=4096, description="Images per call of the image encoder while a job encodes its images."
    )
    decode_threads: int = Field(
        2,
        ge=0,
        le=64,
        description="Threads per job that read, decode and preprocess the next batches of images while the image"
        " encoder runs on one; 0: decode in the encoder's thread, between its calls.",
    )

    encoder: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto",
        description="What runs the image encoder while a job encodes its images: `onnxruntime` (the exported image"
        " tower, exported once per backbone into the model cache), `torch`, or `auto` (ONNX Runtime on a CPU"
        " worker when onnxruntime is installed, torch on a GPU). Features agree within cosine 0.9999.",
    )

    # --- webhooks (docs/integrations.md) ----------------------------------------------------------
    webhook_allowed_hosts: str = Field(
        "*",
        description="Hosts a webhook URL may name, comma-separated: `*` (any host), `example.com` (that host),"
        " `*.example.com` (its subdomains); empty: no webhooks. Every address the host resolves to must also be"
        " public (or in TAGSIFT_WEBHOOK_ALLOWED_NETWORKS), checked at registration and again at each delivery.",
    )
    webhook_allowed_networks: str = Field(
        "",
        description="Private, loopback or link-local networks a webhook may still reach, comma-separated CIDRs"
        " (e.g. `10.0.0.0/8,127.0.0.1/32`); empty: only public addresses.",
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, le=60, description="Connect and read timeout of one webhook delivery attempt."
    )
    webhook_max_attempts: int = Field(
        10, ge=1, le=30, description="Attempts of one webhook delivery (the first plus retries) before it is failed."
    )
    webhook_retry_seconds: float = Field(
        10.0,
        gt=0,
        description="Wait before the first retry of a failed webhook delivery; doubled after each further failure,"
        " at most 1 hour.",
    )
    webhook_poll_seconds: float = Field(
        1.0, ge=0, description="How often each worker looks for due webhook deliveries; 0: this worker sends none."
    )
    webhook_log_days: float = Field(
        30.0,
        ge=0,
        description="Finished webhook deliveries (succeeded or failed) are deleted from the delivery log after this"
        " many days; 0: kept forever.",
    )

    # --- test infrastructure (read by tests/conftest.py only) ---------------------------------------
    test_postgres_url: str = Field(
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        description="Tests: a PostgreSQL server to create throwaway databases on (started if not answering).",
    )
    test_redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Tests: a Redis server (a throwaway one is started if not answering)."
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level of API and worker.")
    worker_health_file: Path | None = Field(
        None,
        description="A file the worker's main process rewrites every TAGSIFT_WORKER_HEALTH_SECONDS, from a thread of"
        " its own (so it answers during a job); `tagsift worker-health` checks it. Empty: none.",
    )
    worker_health_seconds: float = Field(
        10.0, gt=0, le=3600, description="How often the worker rewrites TAGSIFT_WORKER_HEALTH_FILE."
    )

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        # tags are stored in label columns of 200 characters (app.models.Item.label / given_label)
        if not 1 <= self.max_tag_length <= MAX_TAG_COLUMN:
            raise ValueError(
                f"TAGSIFT_MAX_TAG_LENGTH must be from 1 to {MAX_TAG_COLUMN} (the database's tag column width),"
                f" got {self.max_tag_length}"
            )
        return self

    @model_validator(mode="after")
    def _check_webhook_networks(self) -> Settings:
        for cidr in _split(self.webhook_allowed_networks):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(
                    f"TAGSIFT_WEBHOOK_ALLOWED_NETWORKS: {cidr!r} is not a network (write CIDRs like 10.0.0.0/8)"
                ) from None
        return self

    @model_validator(mode="after")
    def _check_secret_keys(self) -> Settings:
        short = [i + 1 for i, k in enumerate(_split(self.secret_keys)) if len(k) < 32]
        if short:
            raise ValueError(
                f"TAGSIFT_SECRET_KEYS: key {short[0]} is shorter than 32 characters (make one: openssl rand -hex 32)"
            )
        return self

    @property
    def secret_key_list(self) -> list[str]:
        """TAGSIFT_SECRET_KEYS, newest first."""
        return _split(self.secret_keys)

    @property
    def webhook_host_patterns(self) -> list[str]:
        """TAGSIFT_WEBHOOK_ALLOWED_HOSTS as lower-case patterns."""
        return [h.lower().rstrip(".") for h in _split(self.webhook_allowed_hosts)]

    @property
    def webhook_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """TAGSIFT_WEBHOOK_ALLOWED_NETWORKS as networks."""
        return [ipaddress.ip_network(c, strict=False) for c in _split(self.webhook_allowed_networks)]

    @model_validator(mode="after")
    def _fill_derived_defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'tagsift.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.data_dir / 'broker.sqlite'}"
        if self.model_cache_dir is None:
            self.model_cache_dir = self.data_dir / "models"
        self.model_cache_dir = self.model_cache_dir.expanduser().resolve()
        self.cpu_queue = self.cpu_queue or f"{self.queue}.cpu"
        self.gpu_queue = self.gpu_queue or f"{self.queue}.gpu"
        self.live_queue = self.live_queue or f"{self.queue}.live"
        if len({self.queue, self.cpu_queue, self.gpu_queue, self.live_queue}) < 4:
            raise ValueError(
                "TAGSIFT_QUEUE, TAGSIFT_CPU_QUEUE, TAGSIFT_GPU_QUEUE and TAGSIFT_LIVE_QUEUE must be different names,"
                f" got {self.queue!r}, {self.cpu_queue!r}, {self.gpu_queue!r} and {self.live_queue!r}"
            )
        return self

    def queue_for(self, device: str) -> str:
        """The queue of a job asked for ``device`` ('auto', 'cpu' or 'gpu')."""
        return {"cpu": self.cpu_queue, "gpu": self.gpu_queue}.get(device, self.queue)

    def worker_queues(self, worker_device: str) -> list[str]:
        """The queues a CPU or a GPU worker consumes: the any-device queue and its own device's."""
        return [self.queue, self.gpu_queue if worker_device == "gpu" else self.cpu_queue]

    @property
    def is_embedded(self) -> bool:
        """True when the database is SQLite (the embedded default)."""
        return self.database_url.startswith("sqlite")


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


def model_cache_environment(settings: Settings) -> dict[str, str]:
    """The Hugging Face variables that keep every download under TAGSIFT_MODEL_CACHE_DIR (docs/deploy.md): HF_HOME
    for what open_clip fetches without a cache directory of its own (text towers' configs and tokenizers), and
    HF_HUB_OFFLINE when TAGSIFT_OFFLINE is set. An HF_HOME the operator set already is kept."""
    env = {"HF_HOME": os.environ.get("HF_HOME") or str(settings.model_cache_dir / "huggingface")}
    if settings.offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def apply_model_cache_environment(settings: Settings) -> None:
    """Set :func:`model_cache_environment` in this process (the worker, before it imports huggingface_hub, which
    reads them once; prefork children inherit them)."""
    os.environ.update(model_cache_environment(settings))


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting: the README's configuration section."""
    rows = []
    for name, field in Settings.model_fields.items():
        env = f"TAGSIFT_{name.upper()}"
        default = field.default
        rows.append((env, "" if default is None else str(default), field.description or ""))
    return rows
