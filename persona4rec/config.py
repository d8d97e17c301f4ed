"""Layered, typed, validated configuration.

Precedence, lowest to highest (each layer deep-merges over the one before; lists are replaced whole):

1. ``conf/defaults.yaml``: every key, with its default;
2. the dataset layer ``conf/datasets/<dataset>.yaml`` (or a YAML file given by path), chosen by the
   ``dataset`` key as set by the layers above and below it (command line first);
3. an experiment file (``--config FILE``);
4. ``key=value`` overrides on the command line (values parsed as YAML scalars or lists, never evaluated).

The merged document is validated into frozen pydantic models: an unknown key or a wrong type fails with
the dotted key, the layer that set it, and a suggestion for a misspelt key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from persona4rec.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --------------------------------------------------------------------------------------------- data


class DatasetFile(_Section):
    """One file of a dataset: where it is published and how to recognise it."""

    filename: str = Field(description="Name of the file inside data.local_dir or the download cache.")
    url: str | None = Field(None, description="Public download address; null for manual-download data.")
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="Published or recorded checksum; null when unknown."
    )
    optional: bool = Field(False, description="The pipeline runs without this file when it is absent.")


class GenericColumns(_Section):
    """Column names of a generic review table, mapped onto the canonical review fields."""

    user_id: str
    item_id: str
    rating: str
    timestamp: str
    text: str
    title: str | None = None
    review_id: str | None = None


class DataConfig(_Section):
    """The review corpus: which reader, which files, and where to find them."""

    format: Literal["amazon2014", "amazon2023", "yelp", "generic"]
    description: str = ""
    homepage: str | None = None
    terms: str | None = None
    manual_download: bool = False
    reviews: DatasetFile
    metadata: DatasetFile | None = None
    local_dir: str | None = Field(
        None, description="Read the dataset's files from this folder instead of the download cache."
    )
    cache_dir: str = Field("~/.cache/persona4rec/datasets", description="Where `p4r data fetch` stores files.")
    verify_checksums: bool = True
    # Generic readers only.
    file_format: Literal["jsonl", "csv", "parquet"] | None = None
    columns: GenericColumns | None = None
    timestamp_unit: Literal["s", "ms", "iso"] = "s"

    @model_validator(mode="after")
    def _generic_needs_mapping(self) -> DataConfig:
        if self.format == "generic" and (self.file_format is None or self.columns is None):
            raise ValueError("format 'generic' needs data.file_format and data.columns")
        return self


# -------------------------------------------------------------------------------------------- spark


class SparkConfig(_Section):
    """Where and how Spark runs; any other Spark property goes in ``conf``."""

    master: str = "local[*]"
    app_name: str = "persona4rec"
    driver_memory: str = "4g"
    shuffle_partitions: int = Field(8, ge=1)
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "ERROR"
    conf: dict[str, str] = Field(default_factory=dict)


# ------------------------------------------------------------------------------------------ prepare


class ItemFilterConfig(_Section):
    """Which items enter the corpus, by their metadata (applied before the k-core)."""

    require_metadata: bool = False
    categories_any: list[str] = Field(default_factory=list)
    cities: list[str] = Field(default_factory=list)


class SamplesConfig(_Section):
    """Per-item review samples handed to the LLM (training reviews with text only)."""

    max_per_item: int = Field(12, ge=1)
    min_text_chars: int = Field(1, ge=1)


class PrepareConfig(_Section):
    """Cleaning, filtering and splitting of the review corpus."""

    k_core: int = Field(5, ge=3, description="Every user and item keeps at least k interactions (>= 3 for LOO).")
    k_core_driver_max_pairs: int = Field(
        20_000_000, ge=0, description="Run the k-core in numpy on the driver up to this many pairs, else on Spark."
    )
    min_rating: float = 1.0
    max_rating: float = 5.0
    min_timestamp: int = Field(
        0, description="Earliest valid review time, unix seconds (1970 by default; later times kept)."
    )
    item_filter: ItemFilterConfig = ItemFilterConfig()
    samples: SamplesConfig = SamplesConfig()
    min_kept_share: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Fail, publishing nothing, when fewer than this share of the input lines end up in reviews "
        "(an empty result always fails; 0: only that).",
    )

    @model_validator(mode="after")
    def _rating_range(self) -> PrepareConfig:
        if self.min_rating > self.max_rating:
            raise ValueError("prepare.min_rating must not exceed prepare.max_rating")
        return self


# ------------------------------------------------------------------------------------------- ray


class RayConfig(_Section):
    """Where Ray jobs run: an embedded local Ray by default, any cluster by address."""

    address: str | None = Field(None, description="Ray cluster address (ray://host:10001 or 'auto'); null: local.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded local Ray (null: all).")


#: The error type of a value refused because it holds a secret: its value is never shown back.
SECRET_ERROR = "secret_in_value"
#: Names that must never be passed as plain job variables (they are visible in the Ray dashboard).
_SECRET_NAME = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL|API_?KEY|ACCESS_?KEY", re.IGNORECASE)


class SubmitConfig(_Section):
    """`p4r submit`: a stage or the whole pipeline as a job on a Ray cluster (Ray's Job Submission API)."""

    address: str | None = Field(
        None, description="The cluster's job API: http://<head>:8265 (the dashboard port). Required to submit."
    )
    token_env: str | None = Field(
        None, description="Environment variable holding the cluster's auth token (Ray token authentication)."
    )
    token_file: str | None = Field(
        None, description="Or a file holding it; neither: Ray's own lookup (RAY_AUTH_TOKEN, ~/.ray/auth_token)."
    )
    python: str = Field("python", description="The cluster's Python that runs the job's entrypoint.")
    ship_code: bool = Field(
        True,
        description="Ship this installation's persona4rec code with the job, so the cluster runs exactly this "
        "version over its own installed dependencies; false: use the persona4rec the cluster has.",
    )
    pip: list[str] = Field(default_factory=list, description="Extra pip requirements installed for the job only.")
    env_vars: dict[str, str] = Field(
        default_factory=dict,
        description="Variables set for the job. Never secrets (the dashboard shows them): those belong in the "
        "cluster's own environment or files, named by mlflow.credentials_file and index.token_env/token_file.",
    )
    entrypoint_num_cpus: float = Field(0.0, ge=0, description="CPUs reserved for the job's driver process.")
    entrypoint_num_gpus: float = Field(0.0, ge=0, description="GPUs reserved for the job's driver process.")

    @field_validator("env_vars")
    @classmethod
    def _no_secrets(cls, env: dict[str, str]) -> dict[str, str]:
        secret = sorted(name for name in env if _SECRET_NAME.search(name))
        if secret:
            raise PydanticCustomError(
                SECRET_ERROR,
                f"{', '.join(secret)}: secrets must not travel as job variables (the dashboard shows them); "
                "provide them in the cluster's environment and name them with index.token_env, or in files "
                "(mlflow.credentials_file, index.token_file)",
            )
        return env

    @model_validator(mode="after")
    def _one_token_source(self) -> SubmitConfig:
        if self.token_env and self.token_file:
            raise ValueError("submit.token_env and submit.token_file: set one of them, not both")
        return self


def _no_credentials_in_uri(uri: str | None, key: str) -> str | None:
    """A URI with ``user:password@`` would put a secret into configs, manifests and logs: refuse it."""
    if uri and "://" in uri and "@" in uri.split("://", 1)[1].split("/", 1)[0]:
        raise PydanticCustomError(
            SECRET_ERROR,
            f"{key} carries credentials (user:password@host); give the bare address and put the credentials "
            "in the environment or a file (see docs/operations.md)",
        )
    return uri


# ------------------------------------------------------------------------------------------- llm


class VLLMOptions(_Section):
    dtype: str = Field(
        "auto",
        description="Weights dtype ('auto', 'bfloat16', 'float16', 'float32'). 'auto' is the model's own, except "
        "float32 on a CPU without native bf16 (no avx512_bf16/amx_bf16 flag), where bf16 ran at under half the pace.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine spans.")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    enforce_eager: bool = Field(True, description="Skip graph capture/compilation (faster start; required on CPU).")
    cpu_kv_cache_gib: int = Field(2, ge=1, description="KV cache of the CPU build, in GiB.")
    engine_process: bool = Field(
        True,
        description="Run vLLM's engine core in a process of its own (vLLM's default; overlaps scheduling with "
        "GPU work). false: in the caller's process, which starts ~20 s faster on a CPU and wastes no core polling.",
    )


class LlamaCppOptions(_Section):
    filename: str | None = Field(
        None, description="GGUF file inside a hub repository (glob allowed); unused when llm.model is a file."
    )
    n_threads: int | None = Field(None, ge=1, description="CPU threads (null: llama.cpp's default).")
    n_gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to a GPU (-1: all).")


class OpenAIOptions(_Section):
    base_url: str = Field("http://127.0.0.1:8000/v1", description="Any OpenAI-compatible endpoint.")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Name of the environment variable holding the key (never the key itself)."
    )
    max_concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(3, ge=0, description="Retries of a request that failed at the transport (429, 5xx).")


class LLMConfig(_Section):
    """One LLM engine behind one interface; which engine runs it is configuration."""

    engine: Literal["vllm", "llamacpp", "openai", "extractive"] = Field(
        "vllm",
        description="extractive: no LLM, each persona restates one sampled review (a baseline persona source).",
    )
    model: str = Field(
        "Qwen/Qwen2.5-1.5B-Instruct",
        description="Hub id or local path (vLLM: a Hugging Face folder; llama.cpp: a .gguf file or hub repo).",
    )
    max_model_len: int = Field(4096, ge=256, description="Context window (prompt + answer) in tokens.")
    temperature: float = Field(0.0, ge=0)
    seed: int = 0
    vllm: VLLMOptions = VLLMOptions()
    llamacpp: LlamaCppOptions = LlamaCppOptions()
    openai: OpenAIOptions = OpenAIOptions()


# ----------------------------------------------------------------------------------------- reason


class ActorPoolConfig(_Section):
    num_actors: int = Field(1, ge=1, description="LLM engine actors (one engine each).")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per actor (fractional is fine).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; set to llm.vllm.tensor_parallel_size on GPUs.")
    batch_size: int = Field(16, ge=1, description="Items handed to an actor at once (one engine batch).")


class PersonaLimits(_Section):
    min: int = Field(2, ge=1, description="Fewest personas for an item with two or more sampled reviews.")
    max: int = Field(7, ge=1, description="Most personas per item.")
    name_chars: int = Field(60, ge=10)
    text_chars: int = Field(400, ge=40, description="Cap on description and rationale (schema maxLength).")


class DedupConfig(_Section):
    embedder: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2",
        description="sentence-transformers model (hub id or local path) used to find near-duplicate personas.",
    )
    threshold: float = Field(0.92, gt=0, le=1, description="Cosine at or above which two personas are merged.")


class DefenceConfig(_Section):
    """Defences against orders planted in review text (indirect prompt injection; reasoning/screen.py)."""

    screen_reviews: bool = Field(
        True,
        description="Keep sampled reviews that read as orders to the model (ignore your instructions, fake system "
        "tags, answer-shaped JSON, persona orders) out of every prompt, with the reason, counted in the manifest.",
    )
    screen_personas: bool = Field(
        True,
        description="Check every persona and summary, from any engine or cache, for instruction echoes, role tags, "
        "markup, system-prompt text and names that are no audience: retried, or dropped with the reason.",
    )


class ReasonConfig(_Section):
    """Offline LLM reasoning: summaries and personas per item (and, in paper mode, per-review aspects)."""

    mode: Literal["efficient", "paper"] = Field(
        "efficient",
        description="efficient: one call per item, labels from evidence; paper: aspects per review + judge.",
    )
    prompts: str = Field("v1", description="Prompt set under conf/prompts/ (versioned; part of every cache key).")
    reviews_per_item: int = Field(8, ge=1, description="Prefix of the item's review sample shown to the LLM.")
    review_chars: int = Field(600, ge=50, description="Each review is cut to this many characters.")
    max_tokens: int = Field(1200, ge=64, description="Answer budget of a persona call.")
    max_attempts: int = Field(3, ge=1, description="Tries per item before it is recorded as failed.")
    limit_items: int | None = Field(None, ge=1, description="Reason over the first N items only (demos, smoke runs).")
    seed_caches: list[str] = Field(
        default_factory=list,
        description="Read-only result caches consulted before any LLM call: folders of cache parts from other "
        "runs (e.g. committed under benchmarks/). Answers are keyed by content, so only identical work is reused.",
    )
    personas: PersonaLimits = PersonaLimits()
    dedup: DedupConfig = DedupConfig()
    defences: DefenceConfig = DefenceConfig()
    quality: bool = Field(
        True,
        description="Measure the output's persona quality (evidence, review coverage, diversity, restated "
        "rationales, cut fields, groundedness; reasoning/quality.py) with the dedup embedder, into the manifest "
        "and quality.md. It embeds ~25 texts an item.",
    )
    actors: ActorPoolConfig = ActorPoolConfig()

    @model_validator(mode="after")
    def _bounds(self) -> ReasonConfig:
        if self.personas.min > self.personas.max:
            raise ValueError(f"personas.min ({self.personas.min}) > personas.max ({self.personas.max})")
        return self


class AlignConfig(_Section):
    """Training labels: (user, item, positive persona) for training interactions only."""

    history: int = Field(6, ge=1, description="Judge (paper mode): the user's most recent earlier reviews shown.")
    judge_max_tokens: int = Field(300, ge=32)
    max_attempts: int = Field(3, ge=1)
    limit_interactions: int | None = Field(None, ge=1, description="Judge only the first N interactions (demos).")


# ------------------------------------------------------------------------------------------ encoder


class EmbedConfig(_Section):
    """Base embeddings of every persona, interaction and item text (`p4r embed`), on a Ray actor pool."""

    model: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2",
        description="Base sentence-transformers model (hub id, path or package:<module>): the 'vanilla' encoder.",
    )
    max_length: int = Field(256, ge=16, description="Tokens kept per text (the model's own cap applies too).")
    batch_size: int = Field(64, ge=1, description="Texts per forward pass.")
    num_actors: int = Field(1, ge=1, description="Embedding actors (one model each).")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per actor.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (the model runs on CUDA when > 0).")
    chunk_rows: int = Field(
        512, ge=1, description="Vectors written per cache part: what a crash can lose at most, and the progress step."
    )


class ProfileConfig(_Section):
    """User profile: the recency-weighted mean of the last L interaction embeddings (paper Eq. 7)."""

    history: int = Field(10, ge=1, description="L: most recent interactions in a profile.")
    gamma: float = Field(0.65, gt=0, le=1, description="Recency decay used in training (the release's 0.65).")
    gamma_grid: list[float] = Field(
        default_factory=lambda: [0.5, 0.65, 0.8, 0.9, 1.0],
        description="Values tried on validation after training; the best is stored with the model.",
    )

    @model_validator(mode="after")
    def _grid(self) -> ProfileConfig:
        if not self.gamma_grid or any(not 0 < g <= 1 for g in self.gamma_grid):
            raise ValueError("gamma_grid must be a non-empty list of values in (0, 1]")
        return self


class LoraOptions(_Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | None = Field(None, description="null: peft's default for the architecture.")


class ObjectiveConfig(_Section):
    """What the encoder learns (the losses, their inputs and maths: persona4rec/encoder/loss.py)."""

    target: Literal["item", "persona"] = Field(
        "item",
        description=(
            "item: every training interaction with a history is a positive, its item scored as the max over its "
            "personas (what serving ranks by); persona: only interactions whose review a persona cites (or the judge "
            "labelled), the labelled persona as the positive (the paper)."
        ),
    )
    aggregation: Literal["max", "logsumexp"] = Field(
        "max",
        description="How an item's score is made from its personas' cosines while training (item target): the max "
        "that serving computes, or a smooth max (logsumexp) that trains every persona by how close it is.",
    )
    smoothing: float = Field(0.05, gt=0, description="sigma of the logsumexp aggregation.")
    negatives: Literal["batch", "catalogue"] = Field(
        "catalogue",
        description="Item target: every item with personas (one softmax over the catalogue; measured best), or the "
        "other items of the batch (for catalogues too large for that) are the negatives.",
    )
    hard_negatives: int = Field(
        0, ge=0, description="Item target: first-stage items per example added as negatives (0: none)."
    )
    hard_negatives_from: str = Field(
        "lightgcn", description="The candidates generator whose validation lists give the hard negatives."
    )
    popularity_prior: bool = Field(
        False,
        description="Item target: add log training popularity to the logits while training (logit adjustment), so "
        "the persona score learns what popularity does not explain.",
    )
    persona_weight: float = Field(
        0.0, ge=0, description="Item target: weight of the persona-level term on the labelled interactions (0: off)."
    )


class EncoderConfig(_Section):
    """The alignment encoder: one shared tower for user interactions and personas."""

    mode: Literal["vanilla", "head", "lora", "full"] = Field(
        "head",
        description=(
            "vanilla: the base model untouched; head: a trainable residual linear head on frozen base vectors "
            "(fast on a CPU); lora: LoRA adapters in the base model (the paper); full: every weight trained."
        ),
    )
    temperature: float = Field(0.05, gt=0, description="InfoNCE temperature tau: logits are cos / tau.")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    mask: list[Literal["persona", "item", "user"]] = Field(
        default_factory=lambda: ["persona", "item"],
        description="In-batch negatives masked as likely false negatives: same persona, same item, same user.",
    )
    objective: ObjectiveConfig = ObjectiveConfig()
    profile: ProfileConfig = ProfileConfig()
    lora: LoraOptions = LoraOptions()


class TrainConfig(_Section):
    """Contrastive training on Ray Train (`p4r train`)."""

    num_workers: int = Field(2, ge=1, description="Ray Train workers (data parallel).")
    use_gpu: bool = Field(False, description="One GPU per worker.")
    cpus_per_worker: float = Field(1.0, gt=0)
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(
        64, ge=2, description="Examples per worker per step; negatives are gathered across workers."
    )
    lr: float | None = Field(None, gt=0, description="null: per mode (head 1e-3, lora 1e-4, full 2e-5).")
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    patience: int = Field(3, ge=1, description="Epochs without a better validation metric before stopping.")
    metric: Literal["list_ndcg@10", "hr@10", "persona_recall@10"] = Field(
        "list_ndcg@10",
        description=(
            "Validation metric for early stopping, gamma and promotion: list_ndcg@10 reranks each valid-split user's "
            "first-stage list (train.lists; the task the encoder serves); hr@10 ranks all items with personas; "
            "persona_recall@10 ranks all personas for held-out labelled interactions."
        ),
    )
    lists: list[str] | None = Field(
        None,
        description="Generators whose validation lists list_ndcg@10 averages over; null: every generator of "
        "candidates.generators but popularity.",
    )
    holdout_users: float = Field(0.1, ge=0, lt=1, description="Share of labelled users whose labels are held out.")
    max_failures: int = Field(2, ge=0, description="Worker-group restarts from the last checkpoint (FailureConfig).")
    seed: int = 0


class MLflowConfig(_Section):
    """Tracking and the model registry."""

    tracking_uri: str | None = Field(
        None, description="null: a SQLite store at <paths.artifacts>/mlflow.db; else any MLflow tracking URI."
    )
    credentials_file: str | None = Field(
        None,
        description="A tracking server's credentials, in MLflow's INI format ([mlflow] with mlflow_tracking_username "
        "and mlflow_tracking_password, or mlflow_tracking_token); MLFLOW_TRACKING_* variables, if set, win.",
    )
    experiment: str = "persona4rec"
    registered_model: str | None = Field(None, description="null: persona4rec-encoder-<dataset>.")
    champion_alias: str = "champion"

    @field_validator("tracking_uri")
    @classmethod
    def _bare_uri(cls, uri: str | None) -> str | None:
        return _no_credentials_in_uri(uri, "mlflow.tracking_uri")


class PromoteConfig(_Section):
    """`p4r promote`: which registered encoder challenges the champion."""

    version: str | None = Field(None, description="The registered version to consider; null: the latest.")

    @field_validator("version", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# ------------------------------------------------------------------------------------------- index, scoring, serving


class IndexConfig(_Section):
    """The persona-profiled item index in Milvus (`p4r index`): versioned collections behind one alias."""

    uri: str | None = Field(
        None,
        description=(
            "null: a Milvus Lite file at <paths.artifacts>/milvus.db (one process at a time); else any Milvus "
            "URI: a server or cluster (http://host:19530), or `milvus-lite server` for several processes."
        ),
    )
    token_env: str | None = Field(None, description="Environment variable holding the Milvus token, if one is needed.")
    token_file: str | None = Field(None, description="A file holding the Milvus token (e.g. a mounted secret).")
    alias: str | None = Field(None, description="null: p4r_<dataset>. Readers use it; it points at the live version.")
    encoder_version: str | None = Field(None, description="Registered encoder version to index with; null: champion.")

    @field_validator("uri")
    @classmethod
    def _bare_uri(cls, uri: str | None) -> str | None:
        return _no_credentials_in_uri(uri, "index.uri")

    @model_validator(mode="after")
    def _one_token_source(self) -> IndexConfig:
        if self.token_env and self.token_file:
            raise ValueError("index.token_env and index.token_file: set one of them, not both")
        return self

    @field_validator("encoder_version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        """`index.encoder_version=3` on the command line reads as a number; a version is a name."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    index_type: Literal["FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8"] = Field("HNSW", description="Milvus vector index.")
    index_params: dict[str, int] = Field(
        default_factory=lambda: {"M": 16, "efConstruction": 200}, description="Build parameters of index_type."
    )
    search_params: dict[str, int] = Field(
        default_factory=lambda: {"ef": 512},
        description="Search parameters of index_type (HNSW ef, IVF nprobe); see benchmarks/RESULTS.md for recall.",
    )
    shards: int = Field(1, ge=1, description="Shards per collection (a Milvus server; Lite has one).")
    partitions: int = Field(
        0, ge=0, description="0: none; N: item_id is the partition key, hashed into N partitions (Milvus server)."
    )
    insert_batch: int = Field(2000, ge=1, description="Rows per insert call.")
    check_queries: int = Field(20, ge=0, description="Personas queried with their own vector before the alias moves.")


class ScoreConfig(_Section):
    """Scoring, shared by evaluation and the service: max over an item's personas of cos(user, persona)."""

    fusion_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description=(
            "w in (1 - w) * persona score + w * first-stage score (min-max scaled per request); 0: personas only. "
            "Tune it on validation (persona4rec.scoring.tune_fusion)."
        ),
    )
    learned_generator: str | None = Field(
        None,
        description="The first stage whose validation lists fit the learned reranker the service uses on requests "
        "with first-stage scores; null: the last of candidates.generators.",
    )
    fusion_grid: list[float] = Field(
        default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.5, 0.7], description="Weights tried when tuning fusion."
    )

    @model_validator(mode="after")
    def _grid_in_range(self) -> ScoreConfig:
        if not self.fusion_grid or any(not 0 <= w <= 1 for w in self.fusion_grid):
            raise ValueError("fusion_grid: one or more weights, each in [0, 1]")
        return self


class ServeConfig(_Section):
    """The recommendation service (`p4r serve`)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    unknown_user: Literal["error", "popularity"] = Field(
        "error", description="A user with no history: a 404 that says so, or the most popular items."
    )
    max_candidates: int = Field(1000, ge=1, description="Most candidates one /rerank request may send.")
    max_k: int = Field(200, ge=1, description="Largest k one /recommend request may ask for.")
    reload_interval_s: float = Field(
        5.0, gt=0, description="How often the index alias is checked; a moved alias is loaded, then swapped in."
    )


# --------------------------------------------------------------------------------- candidates, evaluation


class BPRConfig(_Section):
    """BPR-MF: dot products of user and item embeddings learnt with the BPR loss."""

    dim: int = Field(64, ge=1, description="Embedding size.")
    lr: float = Field(0.005, gt=0, description="Adam learning rate.")
    l2: float = Field(1e-4, ge=0, description="L2 weight on the batch's embeddings (per example, halved).")
    epochs: int = Field(100, ge=1, description="Most epochs; validation stops training earlier.")
    batch_size: int = Field(2048, ge=1)
    grid: dict[str, list[float]] = Field(
        default_factory=lambda: {"l2": [1e-4, 1e-3]},
        description="Values tried on validation (every combination); the best by NDCG@top_n is kept.",
    )


class LightGCNConfig(BPRConfig):
    """LightGCN: BPR on embeddings propagated over the normalised user-item graph, averaged over layers."""

    layers: int = Field(3, ge=1, description="Propagation layers K.")


class CandidatesConfig(_Section):
    """First-stage generators (`p4r candidates`): trained on the training split, top-N per user."""

    generators: list[Literal["popularity", "bpr", "lightgcn"]] = Field(
        default_factory=lambda: ["popularity", "bpr", "lightgcn"], description="Generators to train and list."
    )
    top_n: int = Field(20, ge=1, description="Candidates per user (the paper's 20), seen items left out.")
    bpr: BPRConfig = BPRConfig()
    lightgcn: LightGCNConfig = LightGCNConfig()
    eval_every: int = Field(5, ge=1, description="Epochs between validation checks (full-ranking NDCG@top_n).")
    patience: int = Field(4, ge=1, description="Checks without improvement before training stops.")
    eval_users: int | None = Field(10_000, ge=1, description="Validation users sampled for checks (null: all).")
    num_workers: int = Field(0, ge=0, description="0: train in this process; N: on Ray Train with N workers.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each Ray Train worker reserves.")
    max_failures: int = Field(2, ge=0, description="Worker-group restarts from the last checkpoint (FailureConfig).")
    seed: int = 0

    @model_validator(mode="after")
    def _known_grid_keys(self) -> CandidatesConfig:
        for name in ("bpr", "lightgcn"):
            section = getattr(self, name)
            for key, values in section.grid.items():
                if key not in type(section).model_fields or key == "grid":
                    raise ValueError(f"{name}.grid: {key!r} is not a {name} setting")
                if not values:
                    raise ValueError(f"{name}.grid.{key}: give at least one value")
        if len(set(self.generators)) != len(self.generators):
            raise ValueError("generators: each at most once")
        return self


class ListwiseConfig(_Section):
    """The zero-shot listwise LLM reranker, run online on a sample of test users."""

    users: int = Field(20, ge=0, description="Test users sampled (among those whose item was generated); 0: skip.")
    generator: Literal["popularity", "bpr", "lightgcn"] | None = Field(
        None, description="Whose candidates it reranks; null: the last of evaluate.generators."
    )
    history: int = Field(5, ge=1, description="The user's latest items shown.")
    max_tokens: int = Field(160, ge=16)
    max_attempts: int = Field(2, ge=1, description="Tries per user before it is recorded as failed.")
    llm: LLMConfig | None = Field(None, description="The LLM it runs; null: the llm section (the persona writer).")

    @model_validator(mode="after")
    def _an_llm(self) -> ListwiseConfig:
        if self.llm is not None and self.llm.engine == "extractive":
            raise ValueError("llm.engine: the listwise reranker needs an LLM, not the extractive baseline")
        return self


Reranker = Literal[
    "first_stage",
    "popularity",
    "persona_vanilla",
    "persona",
    "persona_fused",
    "summary",
    "learned",
    "learned_no_persona",
    "llm_listwise",
]


class LearnedConfig(_Section):
    """The learned reranker's fit on the validation lists (persona4rec/learned.py): every combination of these
    settings is cross-validated over users, the best by NDCG@10 is refit on every list."""

    folds: int = Field(5, ge=2, description="Cross-validation folds (users are split, never their lists).")
    base: list[Annotated[list[float], Field(min_length=2, max_length=2)]] = Field(
        default_factory=lambda: [[0.0, 0.0], [1.0, 0.0], [1.0, 0.5], [1.0, 1.0], [1.0, 2.0]],
        description="Weights (a, b) of the linear score a * first-stage z + b * persona z the trees start from.",
    )
    leaves: list[int] = Field(default_factory=lambda: [3, 7, 15], description="LightGBM num_leaves tried.")
    min_leaf: list[int] = Field(default_factory=lambda: [50, 200], description="LightGBM min_data_in_leaf tried.")
    rounds: list[int] = Field(
        default_factory=lambda: [0, 10, 25, 50, 100, 200, 400], description="Boosting rounds tried (0: the base alone)."
    )
    learning_rate: float = Field(0.03, gt=0, le=1)

    @model_validator(mode="after")
    def _grids(self) -> LearnedConfig:
        if not (self.base and self.leaves and self.min_leaf and self.rounds):
            raise ValueError("base, leaves, min_leaf and rounds each need at least one value")
        if any(v < 2 for v in self.leaves) or any(v < 1 for v in self.min_leaf) or any(v < 0 for v in self.rounds):
            raise ValueError("leaves >= 2, min_leaf >= 1, rounds >= 0")
        return self


class EvaluateConfig(_Section):
    """Offline evaluation (`p4r evaluate`): every reranker on the same candidates, with CIs and tests."""

    generators: list[Literal["popularity", "bpr", "lightgcn"]] | None = Field(
        None, description="Generators whose candidates are evaluated; null: every one `p4r candidates` made."
    )
    rerankers: list[Reranker] = Field(
        default_factory=lambda: [
            "first_stage", "popularity", "persona_vanilla", "persona", "persona_fused", "summary", "learned",
            "learned_no_persona", "llm_listwise",
        ],
        description=(
            "first_stage: the generator's order; popularity; persona_vanilla: personas with the untuned base "
            "encoder; persona: the registered encoder (index.encoder_version, else the champion); persona_fused: "
            "the same fused with the first stage, weight tuned on validation; summary: one summary vector per "
            "item, same encoder; learned: LambdaRank over persona and first-stage features, fitted on the "
            "validation lists (persona4rec.learned) and registered with the encoder; learned_no_persona: the "
            "same without the persona features (what the personas add); llm_listwise: zero-shot listwise LLM."
        ),
    )  # fmt: skip
    ks: list[int] = Field(default_factory=lambda: [5, 10, 20], description="Cut-offs K of HR, MRR and NDCG.")
    bootstrap: int = Field(1000, ge=10, description="Bootstrap resamples of users for the intervals.")
    confidence: float = Field(0.95, gt=0, lt=1)
    permutations: int = Field(10_000, ge=100, description="Sign flips of the paired randomization test.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level marked in the report.")
    segment_share: float = Field(0.2, gt=0, le=0.5, description="Share of users (items) called warm/cold (head/tail).")
    latency_users: int = Field(200, ge=1, description="Users timed through the in-memory rerank path.")
    learned: LearnedConfig = LearnedConfig()
    listwise: ListwiseConfig = ListwiseConfig()
    log_to_mlflow: bool = Field(True, description="Log metrics, the report and its plots as an MLflow run.")
    seed: int = 0

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, ks: list[int]) -> list[int]:
        if not ks or any(k < 1 for k in ks):
            raise ValueError("ks: one or more cut-offs, each >= 1")
        return sorted(set(ks))


# ------------------------------------------------------------------------------------------- whole


class PathsConfig(_Section):
    artifacts: str = Field("artifacts", description="Root of every stage's versioned outputs.")


class Config(_Section):
    """The whole effective configuration of a run."""

    dataset: str
    data: DataConfig
    paths: PathsConfig = PathsConfig()
    spark: SparkConfig = SparkConfig()
    prepare: PrepareConfig = PrepareConfig()
    ray: RayConfig = RayConfig()
    submit: SubmitConfig = SubmitConfig()
    llm: LLMConfig = LLMConfig()
    reason: ReasonConfig = ReasonConfig()
    align: AlignConfig = AlignConfig()
    embed: EmbedConfig = EmbedConfig()
    encoder: EncoderConfig = EncoderConfig()
    train: TrainConfig = TrainConfig()
    mlflow: MLflowConfig = MLflowConfig()
    promote: PromoteConfig = PromoteConfig()
    index: IndexConfig = IndexConfig()
    score: ScoreConfig = ScoreConfig()
    serve: ServeConfig = ServeConfig()
    candidates: CandidatesConfig = CandidatesConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def hash(self, *sections: str) -> str:
        """sha256 of the canonical JSON of the whole config, or of the named top-level sections only."""
        doc = self.to_dict()
        if sections:
            doc = {name: doc[name] for name in sections}
        return stable_hash(doc)

    @property
    def artifacts_root(self) -> Path:
        return Path(self.paths.artifacts).expanduser() / _safe_name(self.dataset)

    @property
    def tracking_uri(self) -> str:
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        return f"sqlite:///{(Path(self.paths.artifacts).expanduser() / 'mlflow.db').resolve()}"

    @property
    def registered_model(self) -> str:
        return self.mlflow.registered_model or f"persona4rec-encoder-{_safe_name(self.dataset)}"

    @property
    def milvus_uri(self) -> str:
        if self.index.uri:
            return self.index.uri
        return str((Path(self.paths.artifacts).expanduser() / "milvus.db").resolve())

    @property
    def learned_generator(self) -> str:
        return self.score.learned_generator or self.candidates.generators[-1]

    @property
    def train_lists(self) -> list[str]:
        """The generators whose validation lists select the encoder (train.lists, else every CF generator)."""
        if self.train.lists is not None:
            return list(self.train.lists)
        return [g for g in self.candidates.generators if g != "popularity"]

    @property
    def index_alias(self) -> str:
        """Milvus names allow letters, digits and underscores only."""
        return self.index.alias or "p4r_" + re.sub(r"\W", "_", _safe_name(self.dataset))


def stable_hash(obj: Any) -> str:
    """sha256 hex digest of an object's canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _safe_name(dataset: str) -> str:
    return Path(dataset).stem if dataset.endswith((".yaml", ".yml")) else dataset


# ------------------------------------------------------------------------------------------ loading


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config plus where each leaf value came from (dotted key -> layer label)."""

    config: Config
    sources: Mapping[str, str]

    def explain(self) -> str:
        """The effective YAML with each leaf annotated by the layer that set it."""
        lines: list[str] = []
        _explain(self.config.to_dict(), self.sources, "", 0, lines)
        return "\n".join(lines) + "\n"


def conf_dir() -> Path:
    """The packaged ``conf/`` folder (defaults, dataset registry, example experiments)."""
    return Path(str(resources.files("persona4rec.conf")))


def dataset_names() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "datasets").glob("*.yaml"))


def load_config(
    overrides: Iterable[str] = (),
    *,
    experiment: str | Path | None = None,
    dataset: str | None = None,
) -> LoadedConfig:
    """Build the effective config from all layers; raise ConfigError naming the offending key."""
    sources: dict[str, str] = {}
    merged: dict[str, Any] = {}

    defaults_path = conf_dir() / "defaults.yaml"
    _merge(merged, _read_yaml(defaults_path), "defaults", sources)

    exp_doc: dict[str, Any] = {}
    exp_label = ""
    if experiment is not None:
        exp_doc = _read_yaml(Path(experiment))
        exp_label = f"experiment {experiment}"

    cli_doc: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(cli_doc, key, value)
    if dataset is not None:
        cli_doc["dataset"] = dataset

    name = cli_doc.get("dataset", exp_doc.get("dataset", merged.get("dataset")))
    if not isinstance(name, str) or not name:
        raise ConfigError("dataset: must name a registered dataset or a dataset YAML file")
    _merge(merged, _read_yaml(_dataset_layer(name)), f"dataset {name}", sources)
    if exp_doc:
        _merge(merged, exp_doc, exp_label, sources)
    _merge(merged, cli_doc, "command line", sources)

    try:
        config = Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from None
    return LoadedConfig(config=config, sources=sources)


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``a.b=value``; the value is read as a YAML scalar or flow list/map (``[1, 2]``)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: expected key=value, e.g. prepare.k_core=10")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc.problem})") from None
    return key, value


def _dataset_layer(name: str) -> Path:
    if name.endswith((".yaml", ".yml")):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"dataset: file {name} does not exist")
        return path
    path = conf_dir() / "datasets" / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(dataset_names())
        hint = difflib.get_close_matches(name, dataset_names(), n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"dataset: unknown dataset {name!r}{did_you_mean}; registered: {known}")
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_problem(path, exc)) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return doc


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    """One line, ``<path>:<line>:<column>: <problem>``, for a file that is not valid YAML."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if not isinstance(exc, yaml.MarkedYAMLError) or mark is None:
        return f"{path}: not valid YAML: {' '.join(str(exc).split())}"
    problem = exc.problem or exc.context or "not valid YAML"
    if exc.context and exc.problem:
        problem += f" ({exc.context}"
        context_mark = exc.context_mark
        if context_mark is not None and context_mark.line != mark.line:
            problem += f" at line {context_mark.line + 1}"
        problem += ")"
    return f"{path}:{mark.line + 1}:{mark.column + 1}: {problem}"


def _merge(
    into: dict[str, Any], layer: Mapping[str, Any], label: str, sources: dict[str, str], prefix: str = ""
) -> None:
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            if value:  # the keys below now say who set them, not an empty mapping a lower layer gave
                sources.pop(dotted, None)
            _merge(into[key], value, label, sources, dotted + ".")
        else:
            into[key] = _plain(value)
            for stale in [k for k in sources if k.startswith(dotted + ".")]:
                del sources[stale]
            _record(value, dotted, label, sources)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _record(value: Any, dotted: str, label: str, sources: dict[str, str]) -> None:
    if isinstance(value, Mapping) and value:
        for key, sub in value.items():
            _record(sub, f"{dotted}.{key}", label, sources)
    else:
        sources.pop(dotted, None)  # re-insert: the order of ``sources`` is the order of the latest writes
        sources[dotted] = label


def _set_dotted(doc: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = doc
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part!r} is already set to a value, not a section")
        node = child
    node[parts[-1]] = value


def _describe(exc: ValidationError, sources: Mapping[str, str]) -> str:
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        dotted = ".".join(loc)
        origin = _origin(dotted, sources)
        if err["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            known = sorted(parent.model_fields) if parent else []
            hint = difflib.get_close_matches(loc[-1], known, n=1)
            msg = f"{dotted}: unknown key"
            msg += f" (did you mean {'.'.join(loc[:-1] + [hint[0]])!r}?)" if hint else ""
            if known:
                msg += f"; allowed here: {', '.join(known)}"
        elif err["type"] == "missing":
            msg = f"{dotted}: required key is missing"
        else:
            shown = err.get("input")
            secret = err["type"] == SECRET_ERROR  # never echo a value that holds a secret
            msg = (
                f"{dotted}: {err['msg']} (got {shown!r})"
                if not (isinstance(shown, dict) or secret)
                else f"{dotted}: {err['msg']}"
            )
        problems.append(msg + (f" [set by {origin}]" if origin else ""))
    return "invalid configuration:\n  " + "\n  ".join(problems)


def _origin(dotted: str, sources: Mapping[str, str]) -> str | None:
    children = [label for key, label in sources.items() if key.startswith(dotted + ".")]
    if dotted not in sources and children:
        return children[-1]
    while dotted:
        if dotted in sources:
            return sources[dotted]
        dotted = dotted.rpartition(".")[0]
    return None


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def _explain(node: Any, sources: Mapping[str, str], prefix: str, depth: int, out: list[str]) -> None:
    pad = "  " * depth
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.append(f"{pad}{key}:")
            _explain(value, sources, dotted + ".", depth + 1, out)
        else:
            rendered = yaml.safe_dump({key: value}, default_flow_style=True, width=10_000).strip()[1:-1]
            origin = _origin(dotted, sources) or "default (code)"
            out.append(f"{pad}{rendered}  # {origin}")
