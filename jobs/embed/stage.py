"""The embed stage's contract: every text the encoder reads, with its base-embedder vector."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from persona4rec.stage import Build, Stage, Summary
from persona4rec.texts import TEXTS_VERSION

if TYPE_CHECKING:
    from persona4rec.config import Config


@dataclass(frozen=True)
class EmbedSummary(Summary):
    texts: int
    unique_texts: int
    embedded_this_run: int
    from_cache: int
    dim: int
    sentences_per_s: float | None  # this run's embedding rate (None when everything came from the cache)

    def lines(self) -> Iterable[str]:
        rate = f" at {self.sentences_per_s:,} texts/s" if self.sentences_per_s else ""
        yield f"  {self.unique_texts:,} distinct texts of {self.texts:,}; dim {self.dim}"
        yield f"  embedded {self.embedded_this_run:,} new texts{rate}; {self.from_cache:,} from the cache"


def embed_config(cfg: Config) -> dict[str, Any]:
    """What the base vectors depend on (actor counts and batch sizes do not change them)."""
    return {
        "model": cfg.embed.model,
        "max_length": cfg.embed.max_length,
        "texts": TEXTS_VERSION,
        "mode": cfg.reason.mode,
    }


class Embed(Stage):
    """Embed every persona, interaction and item text with the base model (a Ray actor pool).

    \b
    Texts follow one template (persona4rec/texts.py) shared by training, indexing and serving.
    Vectors are cached by content: a rerun, or a catalogue change, embeds only new texts.
    Settings: embed.model (default all-MiniLM-L6-v2), embed.num_actors, embed.num_gpus, embed.batch_size.
    """

    name = "embed"
    version = 1
    upstream = ("prepare", "reason")
    summary = EmbedSummary

    def config(self, cfg: Config) -> dict[str, Any]:
        return embed_config(cfg)

    def missing(self, cfg: Config) -> str:
        return f"no embeddings for {cfg.dataset}: run `p4r embed` first"

    def build(self, b: Build) -> EmbedSummary:
        from persona4rec.jobs.embed.job import build

        return build(b)


STAGE = Embed()
