"""The per-worker training loop that Ray Train runs (data parallel, one process per worker).

Each epoch every worker takes an equal shard of a seeded permutation of the training examples and
encodes its batch in one forward pass. With ``encoder.objective.target: item`` the examples are every
training interaction with a history, each item scored from its personas (the max, or a smooth max)
against every item (or the batch's own) and the first stage's hard negatives (:func:`item_batch_loss`); with
``persona`` they are the labelled interactions, positive personas against the personas of every
worker's batch (:func:`batch_loss`). Rank 0 then validates, the verdict is broadcast, and a checkpoint
is reported holding the latest state (to resume after a failure) and the best state so far (what
training returns). Early stopping ends every worker on the same epoch.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from persona4rec.encoder.data import AlignmentData, Examples, ItemExamples
from persona4rec.encoder.loss import false_negative_mask, info_nce, item_info_nce, item_scores
from persona4rec.encoder.model import EncoderSpec, TextTower, build_tower, encode_texts, load_trainable, trainable_state
from persona4rec.encoder.profile import history_weights
from persona4rec.encoder.validate import evaluate
from persona4rec.infra.train_session import EarlyStopping, Session

if TYPE_CHECKING:
    from persona4rec.config import EncoderConfig, TrainConfig

DEFAULT_LR = {"head": 1e-3, "lora": 1e-4, "full": 2e-5}


def train_loop(config: dict[str, Any], session: Session) -> dict[str, Any]:
    """Train ``config["spec"]`` on ``config["data"]`` with the ``train`` and ``encoder`` config sections."""
    data: AlignmentData = config["data"]
    spec: EncoderSpec = config["spec"]
    t: TrainConfig = config["train"]
    e: EncoderConfig = config["encoder"]
    rank, world = session.rank, session.world
    torch.manual_seed(t.seed)
    device = session.device()

    tower = build_tower(spec, str(device))
    state = session.restore()
    if state is not None:
        load_trainable(tower, state["model"])
    # a text tower computes parts the loss never reads (e.g. BERT's pooler): DDP must be told
    model = session.prepare(tower, **({} if spec.uses_base_vectors else {"find_unused_parameters": True}))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate(t, e), weight_decay=t.weight_decay)
    item_target = e.objective.target == "item"
    examples = data.items if item_target else data.train
    per_worker = max(len(examples) // world, 1)
    steps = t.epochs * math.ceil(per_worker / t.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_linear(int(steps * t.warmup_ratio), steps))
    start, stopping = 0, EarlyStopping(t.patience)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, stopping = state["epoch"] + 1, EarlyStopping.from_state(state["stopping"])

    for epoch in range(start, t.epochs):
        t0 = time.perf_counter()
        model.train()
        rng = np.random.default_rng(t.seed + epoch)
        perm = rng.permutation(len(examples))
        shard = perm[(rank * per_worker) % len(perm) :][:per_worker]
        labelled = rng.permutation(len(data.train)) if item_target and e.objective.persona_weight > 0 else None
        losses = []
        for step, lo in enumerate(range(0, len(shard), t.batch_size)):
            batch = examples.take(shard[lo : lo + t.batch_size])
            if item_target:
                extra = None
                if labelled is not None and len(labelled):
                    at = (step * t.batch_size) % len(labelled)
                    extra = data.train.take(np.roll(labelled, -at)[: t.batch_size])
                loss = item_batch_loss(model, spec, data, batch, e, device, extra)
            else:
                loss = batch_loss(model, spec, data, batch, e, world, rank, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        train_s = time.perf_counter() - t0
        metrics = session.broadcast(_validate(model, spec, data, device) if rank == 0 else None)
        stopping.check(epoch, metrics[t.metric], lambda: trainable_state(model))
        report = {
            **metrics,
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "best": stopping.best,
            "best_epoch": stopping.best_epoch,
            "resumed_from": start,
            "examples_per_s": len(shard) * world / max(train_s, 1e-9),
            "epoch_s": time.perf_counter() - t0,
        }
        stopping.history.append(report)
        if rank == 0 and config.get("progress"):
            shown = "  ".join(f"{k} {metrics[k]:.4f}" for k in metrics)
            print(
                f"train epoch {epoch + 1}/{t.epochs}: loss {report['loss']:.4f}  {shown}  "
                f"(best {stopping.best:.4f} at epoch {stopping.best_epoch + 1})  "
                f"{report['examples_per_s']:.0f} examples/s",
                flush=True,
            )
        state = {"epoch": epoch, "model": trainable_state(model), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "stopping": stopping.to_state()}  # fmt: skip
        session.report(report, state, epoch)
        if stopping.stop:
            break
    return {"stopping": stopping.to_state()}


def learning_rate(t: TrainConfig, e: EncoderConfig) -> float:
    """train.lr, else the mode's default."""
    return t.lr or DEFAULT_LR.get(e.mode, 1e-3)


def _warmup_linear(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(total - warmup, 1))

    return factor


def encode_batch(
    model: torch.nn.Module, spec: EncoderSpec, data: AlignmentData, interactions: np.ndarray, personas: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder vectors of some interactions and personas, in a single forward pass (DDP wants one)."""
    device = next(model.parameters()).device
    if spec.uses_base_vectors:
        x = np.concatenate([data.interaction_vectors[interactions], data.persona_vectors[personas]])
        out = model(torch.from_numpy(x).to(device))
    else:
        tower: TextTower = getattr(model, "module", model)
        texts = [data.interaction_texts[i] for i in interactions] + [data.persona_texts[j] for j in personas]
        out = model(tower.tokenize(texts))
    return out[: len(interactions)], out[len(interactions) :]


def _profiles(inter: torch.Tensor, inverse: np.ndarray, history: np.ndarray, lengths: np.ndarray, gamma: float,
              device) -> torch.Tensor:  # fmt: skip
    """Unit recency-weighted profiles (B, d) from encoded interactions ``inter`` and each history slot's row
    in it (``inverse``, over the slots where ``history >= 0``)."""
    weights = torch.from_numpy(history_weights(lengths, history.shape[1], gamma)).to(device)
    slots = np.zeros(history.shape, dtype=np.int64)
    slots[history >= 0] = inverse
    hist = inter[torch.from_numpy(slots).to(device)]  # (B, L, d); padding slots hold row 0 with weight 0
    return torch.nn.functional.normalize((weights[..., None] * hist).sum(1), dim=-1)


def item_batch_loss(
    model, spec: EncoderSpec, data: AlignmentData, batch: ItemExamples, e: EncoderConfig, device,
    labelled: Examples | None = None,
):  # fmt: skip
    """Item-level InfoNCE of one batch (:func:`~persona4rec.encoder.loss.item_info_nce`), plus
    ``encoder.objective.persona_weight`` times the persona-level InfoNCE of ``labelled`` examples when given.

    Candidate items: the batch's own items and hard negatives (``negatives: batch``) or every item
    (``catalogue``); each user's training items are masked as false negatives. Everything the step needs
    is encoded in one forward pass (DDP wants one).
    """
    item_slots = data.item_slots()
    if e.objective.negatives == "catalogue":
        columns = np.arange(len(data.item_ids))
    else:
        columns = np.unique(np.concatenate([batch.item, batch.negatives[batch.negatives >= 0]]))
    col_slots = item_slots[columns]  # (M, W) persona indices, -1 padded
    wanted = [col_slots[col_slots >= 0]]
    if labelled is not None:
        wanted.append(labelled.positive)
    personas, p_inverse = np.unique(np.concatenate(wanted), return_inverse=True)
    histories = [batch.history[batch.history >= 0]]
    if labelled is not None:
        histories.append(labelled.history[labelled.history >= 0])
    flat, inverse = np.unique(np.concatenate(histories), return_inverse=True)
    inter, pers = encode_batch(model, spec, data, flat, personas)

    n_hist = int((batch.history >= 0).sum())
    users = _profiles(inter, inverse[:n_hist], batch.history, batch.lengths, spec.gamma, device)
    remapped = np.full(col_slots.shape, -1, dtype=np.int64)
    n_cols = int((col_slots >= 0).sum())
    remapped[col_slots >= 0] = p_inverse[:n_cols]
    scores = item_scores(users, pers, torch.from_numpy(remapped).to(device), aggregation=e.objective.aggregation,
                         smoothing=e.objective.smoothing)  # fmt: skip
    positives = np.searchsorted(columns, batch.item)
    false_neg = np.stack([np.isin(columns, data.user_items[u]) for u in batch.user])
    prior = None
    if e.objective.popularity_prior:
        prior = torch.from_numpy(np.log1p(data.item_popularity[columns]).astype(np.float32)).to(device)
    loss = item_info_nce(
        scores, torch.from_numpy(positives).to(device), temperature=e.temperature,
        false_negatives=torch.from_numpy(false_neg).to(device), prior=prior,
    )  # fmt: skip
    if labelled is None:
        return loss
    p_users = _profiles(inter, inverse[n_hist:], labelled.history, labelled.lengths, spec.gamma, device)
    p_pos = pers[torch.from_numpy(p_inverse[n_cols:]).to(device)]
    keys = {
        "persona": torch.from_numpy(labelled.positive).to(device),
        "item": torch.from_numpy(data.persona_item[labelled.positive]).to(device),
        "user": torch.from_numpy(labelled.user).to(device),
    }
    mask = false_negative_mask([keys[m] for m in e.mask], [keys[m] for m in e.mask]) if e.mask else None
    term = info_nce(p_users, p_pos, torch.arange(len(labelled), device=device), temperature=e.temperature,
                    false_negatives=mask, label_smoothing=e.label_smoothing)  # fmt: skip
    return loss + e.objective.persona_weight * term


def batch_loss(
    model, spec: EncoderSpec, data: AlignmentData, batch: Examples, e: EncoderConfig, world: int, rank: int, device
):
    """InfoNCE of one batch: recency-weighted history profiles against their positive personas.

    Every worker's personas are gathered as negatives when ``world > 1``; in-batch negatives that share
    a key named in ``encoder.mask`` with the positive are masked. The training step's hot path
    (``benchmarks/train.py --in-process`` times it alone).
    """
    flat, inverse = np.unique(batch.history[batch.history >= 0], return_inverse=True)
    inter, pers = encode_batch(model, spec, data, flat, batch.positive)
    users = _profiles(inter, inverse, batch.history, batch.lengths, spec.gamma, device)

    keys = {
        "persona": torch.from_numpy(batch.positive).to(device),
        "item": torch.from_numpy(data.persona_item[batch.positive]).to(device),
        "user": torch.from_numpy(batch.user).to(device),
    }
    cols = dict(keys)
    if world > 1:
        from torch.distributed.nn.functional import all_gather

        pers = torch.cat(all_gather(pers))
        for name, local in keys.items():
            parts = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(parts, local)
            cols[name] = torch.cat(parts)
    positives = torch.arange(len(users), device=device) + rank * len(users)
    mask = false_negative_mask([keys[m] for m in e.mask], [cols[m] for m in e.mask]) if e.mask else None
    return info_nce(
        users, pers, positives, temperature=e.temperature, false_negatives=mask, label_smoothing=e.label_smoothing
    )


def encoder_vectors(model: torch.nn.Module, spec: EncoderSpec, data: AlignmentData) -> tuple[np.ndarray, np.ndarray]:
    """Encoder vectors of every persona and of the interactions validation needs (others left zero)."""
    module = getattr(model, "module", model)
    module.eval()
    with torch.inference_mode():
        if spec.uses_base_vectors:
            device = next(module.parameters()).device if any(True for _ in module.parameters()) else "cpu"
            personas = module(torch.from_numpy(data.persona_vectors).to(device)).cpu().numpy()
            interactions = module(torch.from_numpy(data.interaction_vectors).to(device)).cpu().numpy()
            return personas, interactions
        personas = encode_texts(module, data.persona_texts, 64)
        needed = data.needed_interactions()
        interactions = np.zeros((len(data.interaction_texts), personas.shape[1]), dtype=np.float32)
        if len(needed):
            interactions[needed] = encode_texts(module, [data.interaction_texts[i] for i in needed], 64)
        return personas, interactions


def _validate(model, spec: EncoderSpec, data: AlignmentData, device) -> dict[str, float]:
    personas, interactions = encoder_vectors(model, spec, data)
    return evaluate(data, personas, interactions, spec.gamma)
