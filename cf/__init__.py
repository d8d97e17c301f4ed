"""First-stage candidate generators: collaborative filtering trained on the training split.

Every generator honours one small interface (:class:`~persona4rec.cf.base.Generator`): ``fit`` on an
:class:`~persona4rec.cf.data.Interactions` matrix, ``scores`` for a batch of users over the whole catalogue.
:func:`~persona4rec.cf.base.recommend` turns scores into top-N lists with seen items removed. Persona4Rec
only reranks what these generate.
"""

from __future__ import annotations

from persona4rec.cf.base import Generator, recommend
from persona4rec.cf.data import Interactions

__all__ = ["Generator", "Interactions", "recommend"]
