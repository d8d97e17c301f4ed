"""A constructed alignment dataset with a known answer: each user clearly belongs to one persona.

Base vectors are random, so the untrained (vanilla) encoder ranks personas at chance; the users of group
g interact with noisy copies of a group centre c_g while persona g has an unrelated random vector p_g.
A shared linear map can send c_g and p_g to one direction (2G < d), so training must reach near 1.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from persona4rec import schemas


def tables(groups: int = 60, users_per_group: int = 6, dim: int = 192, history: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    centres = unit(rng.normal(size=(groups, dim)))
    persona_vecs = unit(rng.normal(size=(groups, dim)))
    personas = [
        {"persona_id": f"p{g}", "item_id": f"i{g}", "text": f"persona {g}", "vector": persona_vecs[g].tolist()}
        for g in range(groups)
    ]
    inter, labels = [], []
    for g in range(groups):
        for k in range(users_per_group):
            user = f"u{g}-{k}"
            for pos in range(history + 1):
                split = "valid" if pos == history else "train"
                vec = unit(centres[g] + 0.3 * rng.normal(size=dim) / np.sqrt(dim))
                item = f"i{g}" if split == "valid" else f"x{g}-{k}-{pos}"  # train items carry no personas
                inter.append(
                    {
                        "user_id": user, "position": pos, "item_id": item, "review_id": f"r-{user}-{pos}",
                        "split": split, "rating": 5.0, "text": f"interaction of {user} #{pos}", "vector": vec.tolist(),
                    }
                )  # fmt: skip
                if 0 < pos < history:
                    labels.append({"user_id": user, "position": pos, "persona_id": f"p{g}"})
    return (
        pa.Table.from_pylist(inter, schema=schemas.INTERACTION_VECTORS.arrow()),
        pa.Table.from_pylist(personas, schema=schemas.PERSONA_VECTORS.arrow()),
        pa.Table.from_pylist(labels),
    )
