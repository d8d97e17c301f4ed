"""The alignment encoder: one tower for both user interactions and personas, in four modes.

- ``vanilla``: the base sentence-transformers model, untouched (the paper's "vanilla" variant);
- ``head``: a residual linear head on frozen base vectors, x -> normalize(x + W x) with W = 0 at the
  start, so training begins exactly at vanilla; it reads the vectors `p4r embed` already wrote, which
  makes it fast on a CPU;
- ``lora``: LoRA adapters inside the base model (the paper's choice: r 16, alpha 32, dropout 0.05);
- ``full``: every weight of the base model trained.

An :class:`Encoder` is saved as a folder: ``encoder.json`` (the :class:`EncoderSpec`) and
``trainable.pt`` (only the parameters that training changed). Loading rebuilds the tower from the spec
and the base model, then loads those parameters.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from persona4rec.errors import StageUnavailable
from persona4rec.models import resolve_model_ref

SPEC_FILE = "encoder.json"
WEIGHTS_FILE = "trainable.pt"
MODES = ("vanilla", "head", "lora", "full")


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to rebuild an encoder and use it the way it was trained."""

    mode: str
    base: str  # model reference (hub id, path, package:<module>)
    dim: int
    max_length: int
    history: int  # L
    gamma: float  # recency decay; tuned on validation after training
    texts_version: str
    lora: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"encoder mode {self.mode!r}: expected one of {MODES}")

    @property
    def uses_base_vectors(self) -> bool:
        """True when the encoder is a function of the base embedding (vanilla, head)."""
        return self.mode in ("vanilla", "head")

    def with_gamma(self, gamma: float) -> EncoderSpec:
        return replace(self, gamma=gamma)


class ResidualHead(nn.Module):
    """x -> normalize(x + W x) with W zero-initialised: the identity (on unit vectors) until trained."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x + self.linear(x), dim=-1)


class TextTower(nn.Module):
    """A sentence-transformers model as a module: tokenised features -> unit vectors."""

    def __init__(self, st: Any) -> None:
        super().__init__()
        self.st = st

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        features = self.st.preprocess(texts)
        device = next(self.parameters()).device
        return {k: v.to(device) for k, v in features.items() if isinstance(v, torch.Tensor)}

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.st(features)["sentence_embedding"], dim=-1)


def load_sentence_transformer(ref: str, max_length: int, device: str = "cpu") -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise StageUnavailable("the encoder needs sentence-transformers: pip install 'persona4rec[embed]'") from None
    st = SentenceTransformer(resolve_model_ref(ref), device=device)
    st.max_seq_length = min(max_length, st.max_seq_length or max_length)
    return st


def build_tower(spec: EncoderSpec, device: str = "cpu") -> nn.Module:
    """The trainable module of a mode, in its initial state (the base model's behaviour)."""
    if spec.mode == "head":
        return ResidualHead(spec.dim).to(device)
    st = load_sentence_transformer(spec.base, spec.max_length, device)
    if spec.mode == "lora":
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise StageUnavailable("LoRA needs peft: pip install 'persona4rec[embed]'") from None
        lora = LoraConfig(
            r=spec.lora["r"],
            lora_alpha=spec.lora["alpha"],
            lora_dropout=spec.lora["dropout"],
            target_modules=spec.lora.get("target_modules"),
            bias="none",
        )
        st[0].model = get_peft_model(st[0].model, lora)
    elif spec.mode == "vanilla":
        st.requires_grad_(False)
    return TextTower(st)


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters training changes (all of them for head and full, the adapters for lora)."""
    module = getattr(module, "module", module)  # unwrap DistributedDataParallel
    return {name: p.detach().cpu().clone() for name, p in module.named_parameters() if p.requires_grad}


def load_trainable(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    module = getattr(module, "module", module)
    missing = set(state) - {name for name, _ in module.named_parameters()}
    if missing:
        raise ValueError(f"checkpoint has parameters this encoder lacks: {sorted(missing)[:5]}")
    module.load_state_dict(state, strict=False)


class Encoder:
    """A trained (or vanilla) encoder for inference: texts or base vectors in, unit vectors out."""

    def __init__(self, spec: EncoderSpec, tower: nn.Module | None = None) -> None:
        self.spec = spec
        self.tower = tower if tower is not None else build_tower(spec)
        self.tower.eval()
        self._base: Any = None  # the frozen base model of head mode, loaded on first text

    @classmethod
    def vanilla(cls, base: str, *, dim: int, max_length: int, history: int, gamma: float, texts_version: str):
        spec = EncoderSpec("vanilla", base, dim, max_length, history, gamma, texts_version)
        return cls(spec, nn.Identity())

    def transform(self, base_vectors: np.ndarray) -> np.ndarray:
        """Encoder vectors from base-embedder vectors (vanilla and head modes only)."""
        if not self.spec.uses_base_vectors:
            raise ValueError(f"a {self.spec.mode} encoder reads texts, not base vectors")
        x = torch.from_numpy(np.asarray(base_vectors, dtype=np.float32))
        with torch.inference_mode():
            out = self.tower(x) if self.spec.mode == "head" else F.normalize(x, dim=-1)
        return out.numpy()

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Unit vectors for texts, one row each."""
        if not texts:
            return np.zeros((0, self.spec.dim), dtype=np.float32)
        if self.spec.uses_base_vectors:
            if self._base is None:
                self._base = TextTower(load_sentence_transformer(self.spec.base, self.spec.max_length)).eval()
            return self.transform(encode_texts(self._base, texts, batch_size))
        return encode_texts(self.tower, texts, batch_size)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SPEC_FILE).write_text(json.dumps(asdict(self.spec), indent=2) + "\n", encoding="utf-8")
        if self.spec.mode != "vanilla":
            torch.save(trainable_state(self.tower), folder / WEIGHTS_FILE)
        return folder

    @classmethod
    def load(cls, folder: Path) -> Encoder:
        spec = EncoderSpec(**json.loads((folder / SPEC_FILE).read_text(encoding="utf-8")))
        if spec.mode == "vanilla":
            return cls(spec, nn.Identity())
        tower = build_tower(spec)
        load_trainable(tower, torch.load(folder / WEIGHTS_FILE, weights_only=True))
        if spec.mode == "lora":  # fold the adapters into the weights: same vectors, faster inference
            tower.st[0].model = tower.st[0].model.merge_and_unload()
        return cls(spec, tower)


def encode_texts(tower: TextTower, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit vectors of texts through a text tower, in inference mode and batches."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            out.append(tower(tower.tokenize(texts[start : start + batch_size])).cpu().numpy())
    return np.concatenate(out).astype(np.float32)
