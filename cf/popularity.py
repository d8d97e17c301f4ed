"""Most popular first: every user gets the items with the most training interactions."""

from __future__ import annotations

import numpy as np

from persona4rec.cf.base import Generator
from persona4rec.cf.data import Interactions


class Popularity(Generator):
    name = "popularity"

    def fit(self, data: Interactions) -> Popularity:
        self.counts = data.item_counts().astype(np.float32)
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(users), len(self.counts))).copy()
