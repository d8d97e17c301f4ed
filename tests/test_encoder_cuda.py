"""The encoder and the embedder on a CUDA GPU (skipped where there is none, e.g. in CI).

The paths that `embed.num_gpus > 0` and `train.use_gpu` take: the embedder on cuda, training steps of
every mode on cuda, and an encoder trained there saved and loaded back on the CPU. The model is a tiny
BERT with random weights, built on the spot (no hub, no real weights to move to the GPU machine).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

WORDS = [
    "gigging",
    "guitarist",
    "capo",
    "holds",
    "tension",
    "well",
    "tuner",
    "pedal",
    "drummer",
    "sticks",
    "bright",
    "warm",
    "tone",
    "cheap",
    "sturdy",
]
TEXTS = [f"{a} {b} {c}" for a, b, c in zip(WORDS, WORDS[3:] + WORDS[:3], WORDS[7:] + WORDS[:7], strict=True)]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer, 32-wide BERT with a word-level vocabulary, saved as a sentence-transformers folder."""
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate([*specials, *WORDS])}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    raw = folder / "raw"
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    ).save_pretrained(raw)  # fmt: skip
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BertModel(config).save_pretrained(raw)
    word = models.Transformer(str(raw), max_seq_length=32)
    st = SentenceTransformer(modules=[word, models.Pooling(32, pooling_mode="mean"), models.Normalize()])
    out = folder / "st"
    st.save(str(out))
    return str(out)


def test_the_embedder_runs_on_cuda_and_agrees_with_the_cpu(tiny_bert):
    from persona4rec.ray_actors.embedder import BatchEmbedder

    gpu, cpu = BatchEmbedder(tiny_bert, 32, 8, use_gpu=True), BatchEmbedder(tiny_bert, 32, 8, use_gpu=False)
    keys, on_gpu = gpu.embed_chunk(list(range(len(TEXTS))), TEXTS)
    _, on_cpu = cpu.embed_chunk(keys, TEXTS)
    assert on_gpu.shape == (len(TEXTS), 32)
    assert np.abs(on_cpu @ on_cpu.T - np.eye(len(TEXTS))).max() < 0.999  # distinct texts, distinct vectors
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-4)


@pytest.mark.parametrize("mode", ["head", "lora", "full"])
def test_training_steps_on_cuda_lower_the_loss_and_the_encoder_loads_back_on_the_cpu(mode, tiny_bert, tmp_path: Path):
    from persona4rec.encoder.loss import info_nce
    from persona4rec.encoder.model import Encoder, EncoderSpec, build_tower

    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "value"]} if mode == "lora" else {}
    spec = EncoderSpec(mode, tiny_bert, 32, 32, 10, 0.65, "t1", lora)
    tower = build_tower(spec, device="cuda")
    base = Encoder.vanilla(tiny_bert, dim=32, max_length=32, history=10, gamma=0.65, texts_version="t1")
    users_txt, personas_txt = TEXTS[:7], TEXTS[7:14]  # user i's positive is persona i

    def encode(texts: list[str]) -> torch.Tensor:
        if mode == "head":
            return tower(torch.from_numpy(base.encode(texts)).cuda())
        return tower(tower.tokenize(texts))

    params = [p for p in tower.parameters() if p.requires_grad]
    assert params and all(p.is_cuda for p in params)
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(30):
        loss = info_nce(encode(users_txt), encode(personas_txt), torch.arange(7, device="cuda"), temperature=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses

    tower.eval()
    with torch.no_grad():
        trained = encode(TEXTS).cpu().numpy()
    back = Encoder.load(Encoder(spec, tower.cpu()).save(tmp_path / mode))  # loads on the CPU
    np.testing.assert_allclose(back.encode(TEXTS), trained, atol=1e-4)
