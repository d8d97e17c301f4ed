"""The evaluate stage's contract: every reranker on the same first-stage candidates, metrics with intervals."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from persona4rec.artifacts import StageResult
from persona4rec.errors import StageUnavailable
from persona4rec.stage import Build, Stage, Summary
from persona4rec.texts import TEXTS_VERSION

if TYPE_CHECKING:
    from persona4rec.config import Config

PERSONA_RERANKERS = ("persona_vanilla", "persona", "persona_fused", "summary", "learned", "learned_no_persona")
LEARNED = ("learned", "learned_no_persona")
#: The rerankers that read the registered encoder (persona_vanilla uses the untuned base model).
TUNED = ("persona", "persona_fused", "summary", *LEARNED)


@dataclass(frozen=True)
class EvaluateSummary(Summary):
    generators: dict[str, dict[str, Any]]  # generator -> test users, targets in the lists, segment sizes
    fusion: dict[str, dict[str, Any]]  # generator -> tuned weight and the validation grid
    llm: dict[str, Any]  # the listwise LLM's model, sample, failures, cost
    encoder: dict[str, str] | None  # the registered encoder evaluated (None: no tuned persona reranker)
    latency_ms: dict[str, dict[str, float]]  # reranker -> p50/p90/p99/mean of one request
    learned: dict[str, dict[str, Any]] = field(default_factory=dict)  # generator -> reranker -> its fit
    learned_skipped: dict[str, dict[str, str]] = field(default_factory=dict)  # generator -> reranker -> why
    persona_features_p: dict[str, dict[str, float]] = field(default_factory=dict)  # generator -> metric -> p


def runs_listwise(cfg: Config) -> bool:
    return "llm_listwise" in cfg.evaluate.rerankers and cfg.evaluate.listwise.users > 0


def listwise_llm(cfg: Config):
    """The LLM the listwise reranker runs: evaluate.listwise.llm, else the llm section."""
    chosen = cfg.evaluate.listwise.llm or cfg.llm
    if chosen.engine == "extractive":
        raise StageUnavailable(
            "the llm_listwise reranker needs an LLM: llm.engine is the extractive baseline; set "
            "evaluate.listwise.llm (e.g. -c conf/experiments/extractive-personas.yaml) or leave llm_listwise out"
        )
    return chosen


def needs_personas(cfg: Config) -> bool:
    return any(r in PERSONA_RERANKERS for r in cfg.evaluate.rerankers)


class Evaluate(Stage):
    """Rerank the same candidates with every reranker; metrics with CIs and tests; a report with plots.

    \b
    Rerankers (evaluate.rerankers): first_stage, popularity, persona_vanilla (untuned base encoder),
    persona (the champion or index.encoder_version), persona_fused (fusion weight tuned on validation),
    summary (one summary vector per item), learned (LambdaRank over persona and first-stage features,
    fitted on the validation lists with evaluate.learned cross-validated over users, and logged with the
    encoder for /rerank), learned_no_persona (the same without persona features) and llm_listwise
    (zero-shot listwise LLM, evaluate.listwise.llm or llm.*, on evaluate.listwise.users sampled users,
    one request at a time, latency recorded). HR/MRR/NDCG at evaluate.ks over every test user, 95%
    bootstrap intervals, paired randomization tests against first_stage, warm/cold users and head/tail
    items (top/bottom 20% by reviews). Writes report.md, plots/*.png, eval_metrics and eval_ranks (each
    test user's rank under each reranker) under <paths.artifacts>/<dataset>/evaluate/<fingerprint>/ and
    logs them to MLflow.
    Example:
      p4r evaluate -c conf/experiments/offline-cpu.yaml evaluate.listwise.users=50
    """

    name = "evaluate"
    version = 2  # 2: learned rerankers, eval_ranks, one tie policy for fusion tuning
    upstream = ("candidates", "prepare", "embed", "reason")
    summary = EvaluateSummary

    def needs(self, cfg: Config) -> tuple[str, ...]:
        return self.upstream if needs_personas(cfg) else ("candidates", "prepare")

    def config(self, cfg: Config) -> dict[str, Any]:
        encoder = None
        if any(r in TUNED for r in cfg.evaluate.rerankers):
            from persona4rec.jobs.index.stage import encoder_ref

            encoder = encoder_ref(cfg)
        doc: dict[str, Any] = {
            "evaluate": cfg.evaluate.model_dump(mode="json", exclude={"log_to_mlflow"}),
            "encoder": encoder,
            "texts": TEXTS_VERSION,
        }
        if needs_personas(cfg):
            doc["profile"] = cfg.encoder.profile.model_dump(mode="json")
        if runs_listwise(cfg):
            from persona4rec.evaluation.llm_listwise import PROMPT_VERSION

            doc["listwise_llm"] = listwise_llm(cfg).model_dump(
                mode="json", include={"engine", "model", "temperature", "seed"}
            )
            doc["listwise_prompt"] = PROMPT_VERSION
        return doc

    def missing(self, cfg: Config) -> str:
        return f"no evaluation of {cfg.dataset}: run `p4r evaluate`"

    def build(self, b: Build, *, engine: Any = None) -> EvaluateSummary:
        """``engine``: an LLM engine for the listwise reranker instead of one built from :func:`listwise_llm`."""
        from persona4rec.jobs.evaluate.job import build

        return build(b, engine)

    def activate(self, cfg: Config, result: StageResult) -> StageResult:
        """A fresh evaluation is logged to MLflow, and its learned reranker beside the encoder it reranks for."""
        if result.skipped:
            return result
        from persona4rec.jobs.evaluate.job import log

        log(cfg, result)
        return result

    def report(self, cfg: Config, result: StageResult) -> Iterable[str]:
        if result.skipped:
            return [f"  report: {result.folder / 'report.md'}"]
        from persona4rec.jobs.evaluate.job import headline

        return headline(cfg, result)


STAGE = Evaluate()
