"""Promotion: the champion alias moves to a registered encoder only if it beats the champion.

Both are scored on the current validation data (same users, same personas, each with its own tuned
gamma), on ``train.metric``; a tie keeps the champion. The comparison is returned for printing and
recorded on the candidate's model version (tag ``promotion``) and as an artifact of its run.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime

import numpy as np

from persona4rec.config import Config
from persona4rec.encoder.data import AlignmentData, load
from persona4rec.encoder.model import Encoder
from persona4rec.encoder.train_loop import encoder_vectors
from persona4rec.encoder.validate import evaluate
from persona4rec.errors import StageUnavailable
from persona4rec.jobs.promote.stage import Promotion
from persona4rec.stage import Build
from persona4rec.texts import TEXTS_VERSION


def score(encoder: Encoder, data: AlignmentData, cfg: Config, metric: str) -> float:
    """The encoder's validation metric at its own gamma, on the current embed/align outputs."""
    if encoder.spec.texts_version != TEXTS_VERSION:
        raise StageUnavailable(
            f"encoder reads texts {encoder.spec.texts_version}, this code writes {TEXTS_VERSION}: retrain it"
        )
    same_base = encoder.spec.base == cfg.embed.model and encoder.spec.max_length == cfg.embed.max_length
    if encoder.spec.uses_base_vectors and same_base:
        personas, interactions = encoder_vectors(encoder.tower, encoder.spec, data)
    else:  # its base differs from the embedded vectors': encode the texts it needs
        personas = encoder.encode(data.persona_texts)
        needed = data.needed_interactions()
        interactions = np.zeros((len(data.interaction_texts), personas.shape[1]), dtype=np.float32)
        interactions[needed] = encoder.encode([data.interaction_texts[i] for i in needed])
    return evaluate(data, personas, interactions, encoder.spec.gamma)[metric]


def decide(b: Build) -> Promotion:
    """Score the candidate and the champion named in the stage config, and move the alias if it wins."""
    from persona4rec.infra import mlflow as registry

    cfg, chosen = b.cfg, b.manifest.stage_config
    candidate, current, metric = chosen["candidate"], chosen["champion"], chosen["metric"]
    at = datetime.now(UTC).isoformat(timespec="seconds")
    if current == candidate:  # nothing to compare: no scoring
        reason = f"version {candidate} is already the champion"
        decision = Promotion(cfg.registered_model, metric, candidate, None, current, None, False, reason, at)
        registry.record_decision(cfg, candidate, asdict(decision))
        return decision
    with b.timer("load"):
        data = load(cfg, b.inputs["embed"], b.inputs["align"], b.inputs["candidates"])
    with b.timer("score"):
        cand_score = score(registry.load_encoder(cfg, candidate), data, cfg, metric)
        champ_score = None
        if current is None:
            promoted, reason = True, "no champion yet"
        else:
            champ_score = score(registry.load_encoder(cfg, current), data, cfg, metric)
            promoted = cand_score > champ_score
            reason = (
                f"{metric} {cand_score:.4f} > {champ_score:.4f}"
                if promoted
                else f"{metric} {cand_score:.4f} does not beat the champion's {champ_score:.4f}"
            )
    model = cfg.registered_model
    decision = Promotion(model, metric, candidate, cand_score, current, champ_score, promoted, reason, at)
    if promoted:
        registry.set_champion(cfg, candidate, asdict(decision))
    else:
        registry.record_decision(cfg, candidate, asdict(decision))
    return decision
