"""One typed configuration object.

Sources, later ones win: defaults below, a TOML file (``--config`` or ``FRAMEBUS_CONFIG``), then
``FRAMEBUS_*`` environment variables (``FRAMEBUS_BROKER``, ``FRAMEBUS_DATA_DIR``, ``FRAMEBUS_MODELS``,
``FRAMEBUS_INGEST_ROOTS``, ``FRAMEBUS_TOPIC_PREFIX`` are part of the public contract). No other module
reads ``os.environ``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/framebus``, else ``~/.cache/framebus`` (where the Hugging Face cache lives too)."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "framebus"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FRAMEBUS_", extra="ignore")

    # --- broker -------------------------------------------------------------------------------
    broker: str | None = Field(None, description="Kafka bootstrap servers; unset = embedded broker")
    embedded_broker: str = Field("127.0.0.1:9092", description="where the embedded broker listens")
    topic_prefix: str = ""
    partitions: int = Field(4, ge=1, description="partitions of every topic framebus creates")
    replication_factor: int = Field(1, ge=1)
    app_id: str = Field(
        "framebus", description="prefix of the consumer groups (<app_id>.<stage>) and of the changelog topics"
    )
    session_timeout_s: float = Field(10.0, gt=0, description="consumer group session timeout")
    rebalance_timeout_s: float = Field(
        30.0, gt=0, description="how long a member may take to rejoin its group during a rebalance"
    )
    revoke_grace_s: float = Field(
        5.0,
        ge=0,
        description="on revoke, how long work in flight may finish before it is cancelled and left to the "
        "next owner (at most a third of rebalance_timeout_s)",
    )
    closed_ttl_s: float = Field(3600.0, ge=0, description="how long publish remembers finished videos")
    join_ttl_s: float = Field(
        3600.0, ge=0, description="how long index keeps a segment's results while it waits for the rest"
    )
    publish_timeout_s: float = Field(
        3600.0, gt=0, description="a video still unfinished this long after its first progress is published as failed"
    )
    max_table_keys: int = Field(1_000_000, ge=1, description="bound of each partition of a stage's state table")
    delivery_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="at_least_once: idempotent effects, offsets committed after them (works on any broker); "
        "exactly_once: one Kafka transaction per stage micro-batch (outputs, table changelog writes and "
        "offsets), consumers read_committed; needs a broker with transactions (not the embedded one)",
    )
    fault_inject: dict[str, str] = Field(
        default_factory=dict,
        description="testing only: stage=marker,...: the stage's handler raises on events whose value contains "
        "the marker (a bug, as far as the stage can tell)",
    )
    fault_hold: dict[str, float] = Field(
        default_factory=dict,
        description="testing only: stage=seconds,...: the stage pauses that long in the middle of its work "
        "(decode: after a segment is sent; model stages: between the model call and the send), "
        "logging 'fault hold: <stage>' first, so a test can kill a worker in there",
    )
    # Kafka security, passed through to every Kafka client.
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str | None = None  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    # --- storage ------------------------------------------------------------------------------
    data_dir: Path = Field(Path("./framebus-data"), description="vector store, blobs, caches")
    qdrant_url: str | None = Field(None, description="Qdrant server URL; unset = embedded, on disk")
    vector_backend: str = Field("qdrant", description="qdrant or faiss")
    collection_prefix: str = Field("framebus", description="vector collections are <prefix>_<model>_<version>")

    blob_cap_bytes: int = Field(
        2 * 1024**3, ge=0, description="bound of the claim-check frame store; the oldest runs go beyond it"
    )
    blob_ttl_s: float = Field(
        24 * 3600.0, gt=0, description="claim-check frames of a run older than this are deleted (a backstop)"
    )

    # --- models -------------------------------------------------------------------------------
    model_dir: Path | None = Field(
        None,
        description="pretrained weights and Hugging Face cache (unset = <data_dir>/"
        "models); when set, the tiny models live there too",
    )
    cache_dir: Path = Field(
        default_factory=lambda: _user_cache_dir(),
        description="user-level cache of trained tiny models, by recipe id "
        "(default ~/.cache/framebus or $XDG_CACHE_HOME/framebus)",
    )
    models: str = Field("default", description="model profile: default or tiny")
    train_seed: int = Field(0, ge=0, description="seed of the tiny models' training recipe; 0 = the shipped weights")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    train_tiny: bool = Field(
        True,
        description="tiny profile: train missing tiny models at start (only when "
        "no shipped weights match the recipe; cached in cache_dir)",
    )

    # --- ingest limits and policy ---------------------------------------------------------
    ingest_roots: list[Path] = Field(default_factory=list, description="dirs file URIs may come from")
    max_file_bytes: int = 2 * 1024**3
    max_duration_s: float = 4 * 3600.0
    max_width: int = 7680
    max_height: int = 4320
    max_event_bytes: int = 1_000_000

    # --- decode -------------------------------------------------------------------------------
    decoder: str = Field("pyav", description="pyav or decord")
    sample_fps: float = Field(1.0, gt=0, description="frames sampled per second of video")
    shot_detection: bool = Field(True, description="segments are detected shots, else fixed windows")
    min_shot_s: float = Field(0.4, gt=0, description="shortest shot the detector reports")
    segment_s: float = Field(2.0, gt=0, description="length of a fixed segment (shot detection off)")
    max_frames: int = Field(20_000, ge=1)
    frame_size: int = Field(224, ge=16, description="short side of frames sent to models")
    jpeg_quality: int = Field(85, ge=10, le=100)
    decode_workers: int = Field(0, ge=0, description="process pool size; 0 = CPU count")
    decode_threads: int = Field(1, ge=0, description="FFmpeg threads per decode; 0 = FFmpeg's choice")

    # --- batching ----------------------------------------------------------------------------
    embed_batch_size: int = Field(32, ge=1)
    embed_batch_wait_s: float = Field(0.05, ge=0)
    caption_batch_size: int = Field(16, ge=1)
    caption_batch_wait_s: float = Field(0.05, ge=0)
    moderate_batch_size: int = Field(32, ge=1)
    moderate_batch_wait_s: float = Field(0.05, ge=0)
    model_batches_in_flight: int = Field(
        3,
        ge=1,
        le=8,
        description="per model agent: batches in flight (one in the model, "
        "the others being collected, parsed and prepared)",
    )
    prep_threads: int = Field(
        2,
        ge=1,
        le=64,
        description="threads that decode frames and preprocess them for the models, overlapping the model thread",
    )
    index_batch_size: int = Field(64, ge=1)
    index_batch_wait_s: float = Field(0.05, ge=0)

    # --- tasks and moderation policy -----------------------------------------------------------
    tasks: list[str] = Field(
        default_factory=lambda: ["embed", "caption", "moderate"],
        description="what every video gets unless its request asks for less: embed, caption, moderate",
    )
    moderation_threshold: float = Field(0.5, ge=0, le=1, description="default when the model has none")
    moderation_action: str = Field("flag", description="default action for a flagged category")
    moderation_policy: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description='per category: {"threshold": 0.7, "action": "block"}'
    )

    # --- generation ---------------------------------------------------------------------------
    generator: str | None = Field(
        None,
        description="generator backend instead of the profile's: tiny, diffusers-ltx, diffusers-wan (registry names)",
    )
    generator_options: dict[str, Any] = Field(
        default_factory=dict, description='options of that backend, e.g. {"model_id": "...", "dtype": "bf16"} (JSON)'
    )
    generate_steps: int | None = Field(
        None, ge=1, le=1000, description="steps of a request that names none; unset = the model's default"
    )
    generate_max_steps: int = Field(200, ge=1, le=1000, description="requests asking for more steps are refused")
    generate_max_frames: int = Field(257, ge=1, le=1024, description="requests asking for more frames are refused")
    generate_max_pixels: int = Field(1280 * 720, ge=256, description="width x height above this is refused")
    generate_checkpoint_every: int = Field(
        2, ge=1, description="steps between checkpoints of a job's sampling state (a killed job resumes from the last)"
    )
    generate_contrast_guidance: float = Field(
        5.0,
        ge=0,
        le=50,
        description="the tiny generator's shape-contrast guidance (0: off; it lifts shape accuracy but makes the "
        "output moderation check flag more clips)",
    )
    generate_preview_every: int = Field(4, ge=1, description="steps between preview frames on the progress topic")
    generate_queue: int = Field(
        8, ge=1, le=256, description="jobs a generation worker takes at once (queued by priority)"
    )
    generate_tenant_cap: int = Field(
        4, ge=1, description="queued plus running jobs of one tenant in one worker; past it: generate.quota_exceeded"
    )
    generate_batch_size: int = Field(
        4,
        ge=1,
        le=64,
        description="compatible jobs (same model, shape, steps) sampled in one call where the backend can",
    )
    generate_crf: int = Field(20, ge=0, le=51, description="H.264 constant rate factor of generated videos")
    generate_prompt_check: bool = Field(True, description="check prompts before any compute (terms, then embedding)")
    generate_blocked_terms: list[str] = Field(
        default_factory=list, description="words or phrases a prompt must not contain (case-insensitive, whole words)"
    )
    generate_prompt_threshold: float = Field(
        0.5, ge=0, le=1, description="a prompt whose similarity to a moderation category scores this or more is blocked"
    )
    generate_moderate_output: bool = Field(True, description="moderate the finished video before it is published")
    generate_watermark: bool = Field(
        True, description="invisible watermark (dwtDctSvd) on the keyframes of generated videos of 256x256 or more"
    )
    generate_ingest: bool = Field(True, description="ingest each finished video (closed loop), tagged generated")
    generated_cap_bytes: int = Field(10 * 1024**3, ge=0, description="bound of the generated and quarantined videos")
    generated_ttl_s: float = Field(30 * 24 * 3600.0, gt=0, description="generated videos older than this are deleted")
    provenance_cert: Path | None = Field(
        None, description="PEM certificate chain (leaf first) that signs C2PA manifests; unset = a local CA in data_dir"
    )
    provenance_key: Path | None = Field(None, description="PEM private key of provenance_cert")

    # --- HTTP ---------------------------------------------------------------------------------
    http: str = Field("127.0.0.1:8080", description="where the HTTP API listens")
    api_keys: dict[str, str] = Field(
        default_factory=dict,
        repr=False,  # never printed with the settings
        description="API key -> tenant of the HTTP API (Authorization: Bearer KEY); none = open, loopback only. "
        "TOML: an [api_keys] table; env FRAMEBUS_API_KEYS: key1=tenantA,key2=tenantB or a JSON object",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, v: Any) -> Any:
        # Problems raise TypeError, not ValueError: pydantic would print the input (the keys) in its error.
        import re

        if v is None:
            return {}
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("{"):
                try:
                    v = orjson.loads(text)
                except orjson.JSONDecodeError:
                    raise TypeError("api_keys: not a valid JSON object (the keys are not shown)") from None
            else:
                pairs: dict[str, str] = {}
                for i, item in enumerate(text.split(","), 1):
                    if not item.strip():
                        continue
                    key, sep, tenant = item.strip().rpartition("=")  # a key may end in '=' padding
                    if not sep or not key.strip():
                        raise TypeError(f"api_keys: entry {i} is not KEY=TENANT (the keys are not shown)")
                    if key.strip() in pairs:
                        raise TypeError(f"api_keys: entry {i} repeats a key (the keys are not shown)")
                    pairs[key.strip()] = tenant.strip()
                v = pairs
        if not isinstance(v, dict):
            raise TypeError("api_keys: expected a table of KEY = TENANT")
        for i, (key, tenant) in enumerate(v.items(), 1):
            if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9._~+/-]+=*", key):
                raise TypeError(
                    f"api_keys: key {i} is not a bearer token (letters, digits, - . _ ~ + /, then '=' "
                    "padding; the keys are not shown)"
                )
            if not isinstance(tenant, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", tenant):
                raise TypeError(f"api_keys: the tenant of key {i} is not a tenant name (letters, digits, . _ -)")
        return dict(v)

    @field_validator("moderation_policy", "generator_options", mode="before")
    @classmethod
    def _parse_policy(cls, v: Any) -> Any:
        return orjson.loads(v) if isinstance(v, str) else v

    @field_validator("fault_inject", "fault_hold", mode="before")
    @classmethod
    def _parse_pairs(cls, v: Any) -> Any:
        if isinstance(v, str):
            return dict(pair.split("=", 1) for pair in v.split(",") if "=" in pair)
        return v

    @field_validator("tasks", "generate_blocked_terms", mode="before")
    @classmethod
    def _split_tasks(cls, v: Any) -> Any:
        return [t.strip() for t in v.split(",") if t.strip()] if isinstance(v, str) else v

    @field_validator("ingest_roots", mode="before")
    @classmethod
    def _split_roots(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [p for p in v.split(":") if p]
        return v

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        # Colon-separated FRAMEBUS_INGEST_ROOTS is not JSON; read it as a plain string.
        return (init_settings, _PlainEnv(settings_cls), file_secret_settings)

    # --- derived ---------------------------------------------------------------------------------
    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def allowed_roots(self) -> list[Path]:
        """Where ``file`` URIs may point: ``ingest_roots``, or the working directory when none is set."""
        return self.ingest_roots or [Path.cwd()]

    @property
    def qdrant_path(self) -> Path:
        return self.data_dir / "qdrant"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def generated_dir(self) -> Path:
        """Finished generated videos, per tenant: ``<data_dir>/generated/<tenant>`` (ingest accepts files there)."""
        return self.data_dir / "generated"

    @property
    def quarantine_dir(self) -> Path:
        """Generated videos withheld by moderation: ``<data_dir>/quarantine/<tenant>`` (never published)."""
        return self.data_dir / "quarantine"

    @property
    def model_cache_dir(self) -> Path:
        return self.model_dir or self.data_dir / "models"

    def open_store(self):
        """The vector store these settings name (``framebus.indexing.open_store``)."""
        from framebus.indexing import open_store

        return open_store(self.vector_backend, url=self.qdrant_url, path=self.qdrant_path)

    def kafka_security(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients."""
        out: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            out.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        if "SSL" in self.security_protocol:
            from aiokafka.helpers import create_ssl_context

            out["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        return out

    @property
    def bootstrap(self) -> str:
        return self.broker or self.embedded_broker


class _PlainEnv:
    """FRAMEBUS_* variables as plain strings; pydantic does the typing."""

    def __init__(self, settings_cls):
        self.fields = settings_cls.model_fields

    def __call__(self) -> dict[str, Any]:
        out = {}
        for name in self.fields:
            val = os.environ.get(f"FRAMEBUS_{name.upper()}")
            if val is not None and val != "":
                out[name] = val
        return out


def load_settings(config_file: str | os.PathLike | None = None, **overrides: Any) -> Settings:
    """Defaults < TOML file < environment < explicit ``overrides`` (CLI flags; ``None`` = not given)."""
    path = config_file or os.environ.get("FRAMEBUS_CONFIG")
    file_values: dict[str, Any] = {}
    if path:
        with open(path, "rb") as fh:
            file_values = tomllib.load(fh)
    env_values = _PlainEnv(Settings)()
    merged = {**file_values, **env_values, **{k: v for k, v in overrides.items() if v is not None}}
    return Settings(**merged)
