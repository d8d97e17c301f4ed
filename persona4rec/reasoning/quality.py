"""How good an item's personas are as a set, and how good a whole reasoning output is (issue #29).

Two users of the same definitions:

- :func:`set_defects` checks one fresh answer while it can still be retried (``reasoning/solve.py``, for
  prompt sets with ``distinct_personas: true``): near-duplicate personas, a rationale that restates its
  description or a sibling's rationale, siblings citing mostly the same reviews.
- :func:`measure` reports on a whole output (the reason stage's ``personas`` table against the prepare
  stage's ``review_samples``): valid evidence, review coverage, diversity, restated rationales, evidence
  overlap, empty or cut fields and groundedness, as a frozen :class:`PersonaQuality` with ``to_dict()``
  (for a manifest) and ``markdown()`` (for a report).

Everything here is a pure function of persona rows, review rows and an ``embed`` callable (texts ->
L2-normalised vectors, one row per text; :func:`persona4rec.ray_actors.embedder.load_embedder` makes
one). Nothing loads a model or reads a file.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from persona4rec.reasoning.answers import unfinished

EmbedFn = Callable[[list[str]], np.ndarray]

#: Cosine at or above which two texts say the same thing (a rationale and its description, two rationales).
NEAR_IDENTICAL = 0.90
#: Mean pairwise cosine (name + description) at or above which an item's personas are one audience renamed.
NEAR_DUPLICATE_SET = 0.85
#: Cosine of two siblings' descriptions at or above which they are one customer with the noun swapped
#: (the names differ, so name + description alone misses it: 0.6-0.8 for "A guitar / bass / music teacher
#: who loves high-end cables. They value the lifetime warranty ..." under all-MiniLM-L6-v2).
NEAR_DUPLICATE_PAIR = 0.85
#: Evidence Jaccard at or above which two siblings "mostly share" their reviews.
SHARED_EVIDENCE = 0.75

#: The issue's targets, checked in the report: (field, comparison, value).
TARGETS = (
    ("valid_evidence", ">=", 0.95),
    ("coverage", ">=", 0.80),
    ("diversity_mean", "<=", 0.80),
    ("cut_fields", "==", 0),
    ("rationale_differs_from_description", ">=", 0.95),
)

#: The fixed openers v1/v2 ask for ("This persona appreciates this item because ..."): compared without
#: them, two rationales are alike by what they say, not by the words every rationale starts with.
_OPENER = re.compile(
    r"^\s*(?:this|the) persona (?:appreciates|values|likes|loves|enjoys|is (?:disappointed|let down|frustrated))"
    r"[^.]{0,40}?\bbecause\b[\s,]*",
    re.IGNORECASE,
)


def rationale_core(rationale: str) -> str:
    """A rationale without its fixed opener (the whole text when it has none, or nothing else)."""
    core = _OPENER.sub("", rationale).strip()
    return core or rationale.strip()


def key_text(persona: dict[str, Any] | Any) -> str:
    """Who a persona is: name and description (what de-duplication compares, ``dedup.persona_key_text``)."""
    return f"{_get(persona, 'name')}. {_get(persona, 'description')}"


def own_text(persona: dict[str, Any] | Any) -> str:
    """Everything a persona says: name, description, rationale."""
    return f"{_get(persona, 'name')}. {_get(persona, 'description')} {_get(persona, 'rationale')}"


def _get(persona: Any, key: str) -> Any:
    return persona[key] if isinstance(persona, dict) else getattr(persona, key)


def _pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def jaccard(a: Sequence[Any], b: Sequence[Any]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 0.0


# ------------------------------------------------------------------------------------------ one answer


def set_defects(
    personas: Sequence[Any],
    key_vecs: np.ndarray,
    rationale_vecs: np.ndarray,
    description_vecs: np.ndarray,
    *,
    n_reviews: int,
) -> list[str]:
    """What makes one item's personas less than distinct audiences, as short reasons to feed back to the
    model (empty: none). ``*_vecs`` hold one L2-normalised row per persona, embedded from
    :func:`key_text`, :func:`rationale_core` of the rationale, and the description.

    - the set is one audience renamed: mean pairwise cosine of :func:`key_text` >= NEAR_DUPLICATE_SET,
      or two descriptions alike (cosine >= NEAR_DUPLICATE_PAIR);
    - a rationale restates its description, or a sibling's rationale: cosine >= NEAR_IDENTICAL;
    - two siblings cite mostly the same reviews (Jaccard >= SHARED_EVIDENCE), when there are at least as
      many reviews as personas (always, under ``prompts.count_rule``).
    """
    n = len(personas)
    out: list[str] = []
    names = [_get(p, "name") for p in personas]
    pairs = _pairs(n)
    if pairs:
        sims = key_vecs @ key_vecs.T
        mean = float(np.mean([sims[i, j] for i, j in pairs]))
        if mean >= NEAR_DUPLICATE_SET:
            out.append(
                f"the personas are one kind of customer under different names (mean similarity {mean:.2f}); "
                "write audiences that differ in what they need from the item"
            )
    dd = description_vecs @ description_vecs.T
    for i, j in pairs:
        if float(dd[i, j]) >= NEAR_DUPLICATE_PAIR:
            out.append(f"{names[i]!r} and {names[j]!r} have the same description but for the name; merge them "
                       "into one persona or describe customers who need different things")  # fmt: skip
    for i in range(n):
        if float(rationale_vecs[i] @ description_vecs[i]) >= NEAR_IDENTICAL:
            out.append(f"the rationale of {names[i]!r} restates its description; say why this audience values the item")
    rr = rationale_vecs @ rationale_vecs.T
    for i, j in pairs:
        if float(rr[i, j]) >= NEAR_IDENTICAL:
            out.append(f"{names[i]!r} and {names[j]!r} have the same rationale; give each its own reason")
    for i, j in pairs:
        ei, ej = _get(personas[i], "evidence"), _get(personas[j], "evidence")
        if n_reviews >= n and jaccard(ei, ej) >= SHARED_EVIDENCE:
            out.append(f"{names[i]!r} and {names[j]!r} cite mostly the same reviews; give each the reviews it rests on")
    return out


def answer_defects(personas: Sequence[Any], embed: EmbedFn, *, n_reviews: int) -> list[str]:
    """:func:`set_defects` for one answer, embedding its texts in one call."""
    if not personas:
        return []
    n = len(personas)
    texts = [key_text(p) for p in personas]
    texts += [rationale_core(_get(p, "rationale")) for p in personas]
    texts += [_get(p, "description") for p in personas]
    v = embed(texts)
    return set_defects(personas, v[:n], v[n : 2 * n], v[2 * n :], n_reviews=n_reviews)


# ------------------------------------------------------------------------------------------ a whole output


@dataclass(frozen=True)
class PersonaQuality:
    """Persona quality over a whole reasoning output. Shares are over personas unless said otherwise;
    NaN where there is nothing to measure (e.g. no item with two personas)."""

    items: int  # items with at least one persona
    personas: int
    personas_per_item: float
    #: personas citing at least one review, every one of them among its item's shown reviews
    valid_evidence: float
    #: per item, the share of its shown reviews cited by some persona; mean over items (and its minimum)
    coverage: float
    coverage_min: float
    #: pairwise cosine between an item's personas (``diversity_text``), mean over items of the item's mean;
    #: and the mean over items of the item's max pair
    diversity_mean: float
    diversity_max: float
    diversity_text: str
    #: items whose personas are one audience renamed (mean key-text cosine >= NEAR_DUPLICATE_SET, or two
    #: descriptions >= NEAR_DUPLICATE_PAIR); sibling pairs whose descriptions are that alike
    near_duplicate_items: float
    near_duplicate_pairs: float
    #: rationale near-identical (cosine >= NEAR_IDENTICAL, openers stripped) to its own description; to a
    #: sibling's rationale; to either
    rationale_is_description: float
    rationale_is_sibling: float
    rationale_restated: float
    rationale_differs_from_description: float
    #: sibling pairs: mean evidence Jaccard, and the share of pairs that mostly share (>= SHARED_EVIDENCE)
    evidence_overlap: float
    evidence_shared_pairs: float
    #: fields empty, or ending mid-phrase by the validator's rule (``answers.unfinished``): counts
    empty_fields: int
    cut_fields: int
    #: a persona's own text against the reviews it cites and against other items' reviews: mean cosines,
    #: the mean margin (cited - other) and the share of personas closer to their cited reviews
    grounded_cited: float
    grounded_other: float
    grounded_margin: float
    grounded_share: float
    thresholds: dict[str, float] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as None), with each target and whether it is met."""
        d = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in asdict(self).items()}
        d["targets"] = {name: {"target": f"{op} {value}", "met": self.meets(name)} for name, op, value in TARGETS}
        return d

    def meets(self, name: str) -> bool | None:
        for key, op, value in TARGETS:
            if key == name:
                x = getattr(self, key)
                if isinstance(x, float) and np.isnan(x):
                    return None
                return {">=": x >= value, "<=": x <= value, "==": x == value}[op]
        raise KeyError(name)

    def markdown(self, title: str = "Persona quality") -> str:
        """A short report: the measures, the targets met or not, and what each means."""

        def pct(x: float) -> str:
            return "n/a" if np.isnan(x) else f"{x:.1%}"

        def num(x: float) -> str:
            return "n/a" if np.isnan(x) else f"{x:.3f}"

        def mark(name: str) -> str:
            met = self.meets(name)
            target = next(f"{op} {v:g}" for k, op, v in TARGETS if k == name)
            return f"target {target}: " + {True: "met", False: "**missed**", None: "n/a"}[met]

        lines = [
            f"## {title}",
            "",
            f"{self.items} items with personas, {self.personas} personas ({self.personas_per_item:.2f} an item).",
            "",
            "| measure | value | |",
            "|---|---|---|",
            f"| personas citing valid evidence | {pct(self.valid_evidence)} | {mark('valid_evidence')} |",
            f"| review coverage (shown reviews cited by some persona, mean over items) | {pct(self.coverage)} "
            f"(min {pct(self.coverage_min)}) | {mark('coverage')} |",
            f"| mean pairwise cosine of an item's personas | {num(self.diversity_mean)} | {mark('diversity_mean')} |",
            f"| max pairwise cosine of an item's personas (mean over items) | {num(self.diversity_max)} | |",
            f"| items whose personas are one audience renamed | {pct(self.near_duplicate_items)} | |",
            f"| sibling pairs with alike descriptions | {pct(self.near_duplicate_pairs)} | |",
            f"| rationale ≈ its description | {pct(self.rationale_is_description)} "
            f"| {mark('rationale_differs_from_description')} |",
            f"| rationale ≈ a sibling's rationale | {pct(self.rationale_is_sibling)} | |",
            f"| rationale restated (either) | {pct(self.rationale_restated)} | |",
            f"| evidence overlap between siblings (mean Jaccard) | {num(self.evidence_overlap)} | |",
            f"| sibling pairs citing mostly the same reviews | {pct(self.evidence_shared_pairs)} | |",
            f"| empty fields / cut fields | {self.empty_fields} / {self.cut_fields} | {mark('cut_fields')} |",
            f"| groundedness: cosine to cited reviews / to other items' reviews | {num(self.grounded_cited)} / "
            f"{num(self.grounded_other)} (margin {num(self.grounded_margin)}) | |",
            f"| personas closer to their cited reviews than to other items' | {pct(self.grounded_share)} | |",
            "",
            f"Diversity is measured on {self.diversity_text}. Near-identical: cosine ≥ "
            f"{self.thresholds.get('near_identical', NEAR_IDENTICAL):g} (rationales without their fixed opener); "
            f"one audience renamed: mean name+description cosine ≥ "
            f"{self.thresholds.get('near_duplicate_set', NEAR_DUPLICATE_SET):g} or two descriptions ≥ "
            f"{self.thresholds.get('near_duplicate_pair', NEAR_DUPLICATE_PAIR):g}; mostly the same reviews: "
            f"Jaccard ≥ {self.thresholds.get('shared_evidence', SHARED_EVIDENCE):g}.",
        ]
        shown = [(k, v) for k, v in self.examples.items() if v]
        if shown:
            lines += ["", "Examples:"]
            for k, v in shown:
                lines += [f"- {k}: " + "; ".join(v)]
        return "\n".join(lines)


def shown_reviews(reviews: Sequence[dict[str, Any]], per_item: int | None) -> dict[str, list[dict[str, Any]]]:
    """Each item's reviews the prompt showed: its ``review_samples`` rows in ``sample_rank`` order, the first
    ``per_item`` (``reason.reviews_per_item``; None: all). Rows without ``sample_rank`` keep their order."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in reviews:
        by[r["item_id"]].append(r)
    out = {}
    for item, rows in by.items():
        if all("sample_rank" in r for r in rows):
            rows = sorted(rows, key=lambda r: r["sample_rank"])
        out[item] = rows[:per_item] if per_item is not None else rows
    return out


def measure(
    personas: Sequence[dict[str, Any]],
    reviews: Sequence[dict[str, Any]],
    embed: EmbedFn,
    *,
    summaries: dict[str, str | None] | None = None,
    reviews_per_item: int | None = None,
    examples: int = 3,
) -> PersonaQuality:
    """Persona quality of a whole output.

    ``personas``: rows of the reason stage's ``personas`` table (``item_id``, ``name``, ``description``,
    ``rationale``, ``evidence`` = review ids; ``persona_index`` orders siblings when present).
    ``reviews``: the prepare stage's ``review_samples`` rows (``item_id``, ``review_id``, ``text``,
    ``sample_rank``), of which each item's first ``reviews_per_item`` were shown to the model.
    ``summaries`` (item id -> summary, the ``summaries`` table): when given, diversity is measured on the
    passage the index embeds (``texts.persona_text``: name, description, the item's summary, rationale),
    as the headline's comparison of modes does; otherwise on the persona's own words.
    """
    from persona4rec.texts import item_text, persona_text

    by_item: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in personas:
        by_item[p["item_id"]].append(p)
    for rows in by_item.values():
        rows.sort(key=lambda p: p.get("persona_index", 0))
    items = sorted(by_item)
    flat = [p for i in items for p in by_item[i]]
    shown = shown_reviews(reviews, reviews_per_item)
    n = len(flat)
    ex: dict[str, list[str]] = defaultdict(list)

    def note(kind: str, text: str) -> None:
        if len(ex[kind]) < examples:
            ex[kind].append(text)

    # evidence and coverage: no embedding needed
    valid, coverages, overlaps, shared = 0, [], [], []
    for item in items:
        ids = {r["review_id"] for r in shown.get(item, [])}
        cited: set[str] = set()
        rows = by_item[item]
        for p in rows:
            ev = list(p.get("evidence") or [])
            if ev and all(e in ids for e in ev):
                valid += 1
            else:
                note("invalid evidence", f"{item} {p['name']!r} cites {ev}")
            cited |= set(ev) & ids
        if ids:
            coverages.append(len(cited) / len(ids))
        for a, b in _pairs(len(rows)):
            j = jaccard(rows[a].get("evidence") or [], rows[b].get("evidence") or [])
            overlaps.append(j)
            shared.append(j >= SHARED_EVIDENCE)

    # empty and cut fields, by the validator's own rule
    empty = cut = 0
    for p in flat:
        for key, prose in (("name", False), ("description", True), ("rationale", True)):
            value = p.get(key)
            if not isinstance(value, str) or not value.strip():
                empty += 1
                note("empty field", f"{p['item_id']} {p.get('name')!r}.{key}")
            elif unfinished(value, prose):
                cut += 1
                note("cut field", f"{p['item_id']} {p['name']!r}.{key} ends {value[-40:]!r}")

    if n == 0:
        nan = float("nan")
        return PersonaQuality(
            items=0, personas=0, personas_per_item=nan, valid_evidence=nan, coverage=nan, coverage_min=nan,
            diversity_mean=nan, diversity_max=nan, diversity_text="(no personas)", near_duplicate_items=nan,
            near_duplicate_pairs=nan,
            rationale_is_description=nan, rationale_is_sibling=nan, rationale_restated=nan,
            rationale_differs_from_description=nan, evidence_overlap=nan, evidence_shared_pairs=nan,
            empty_fields=0, cut_fields=0, grounded_cited=nan, grounded_other=nan, grounded_margin=nan,
            grounded_share=nan, thresholds=_thresholds(), examples={},
        )  # fmt: skip

    # one embedding call for every persona text, one for every review
    if summaries is not None:
        div_texts = [persona_text(p, item_text(p["item_id"], summaries.get(p["item_id"]))) for p in flat]
        div_label = "the passage the index embeds (name, description, the item's summary, rationale)"
    else:
        div_texts = [own_text(p) for p in flat]
        div_label = "the persona's own words (name, description, rationale)"
    texts = [key_text(p) for p in flat]
    texts += [rationale_core(p.get("rationale") or "") for p in flat]
    texts += [p.get("description") or "" for p in flat]
    texts += [own_text(p) for p in flat]
    texts += div_texts
    v = embed(texts)
    key_v, rat_v, desc_v, own_v, div_v = (v[k * n : (k + 1) * n] for k in range(5))

    review_rows = [r for i in sorted(shown) for r in shown[i]]
    rv = embed([r.get("text") or "" for r in review_rows]) if review_rows else np.zeros((0, v.shape[1]))
    row_of = {r["review_id"]: k for k, r in enumerate(review_rows)}
    item_rows: dict[str, list[int]] = defaultdict(list)
    for k, r in enumerate(review_rows):
        item_rows[r["item_id"]].append(k)
    total = rv.sum(axis=0)

    div_means, div_maxes, dup_items, dup_pairs = [], [], [], []
    is_desc = np.zeros(n, dtype=bool)
    is_sib = np.zeros(n, dtype=bool)
    g_cited, g_other = [], []
    start = 0
    for item in items:
        rows = by_item[item]
        k = len(rows)
        sl = slice(start, start + k)
        start += k
        pairs = _pairs(k)
        if pairs:
            d = div_v[sl] @ div_v[sl].T
            vals = [float(d[a, b]) for a, b in pairs]
            div_means.append(float(np.mean(vals)))
            div_maxes.append(max(vals))
            kk = key_v[sl] @ key_v[sl].T
            dd = desc_v[sl] @ desc_v[sl].T
            alike = [float(dd[a, b]) >= NEAR_DUPLICATE_PAIR for a, b in pairs]
            dup_pairs += alike
            dup = float(np.mean([kk[a, b] for a, b in pairs])) >= NEAR_DUPLICATE_SET or any(alike)
            dup_items.append(dup)
            if dup:
                note("one audience renamed", f"{item}: " + " / ".join(p["name"] for p in rows))
            rr = rat_v[sl] @ rat_v[sl].T
            for a, b in pairs:
                if float(rr[a, b]) >= NEAR_IDENTICAL:
                    if not (is_sib[sl.start + a] or is_sib[sl.start + b]):
                        note("same rationale", f"{item} {rows[a]['name']!r} = {rows[b]['name']!r}: "
                             f"{_clip(rows[a]['rationale'])!r}")  # fmt: skip
                    is_sib[sl.start + a] = is_sib[sl.start + b] = True
        for a in range(k):
            g = sl.start + a
            if float(rat_v[g] @ desc_v[g]) >= NEAR_IDENTICAL:
                is_desc[g] = True
                note("rationale restates description", f"{item} {rows[a]['name']!r}: {_clip(rows[a]['rationale'])!r}")
            cited = [row_of[e] for e in (rows[a].get("evidence") or []) if e in row_of]
            mine = item_rows.get(item, [])
            others = len(review_rows) - len(mine)
            if cited and others > 0:
                g_cited.append(float((rv[cited] @ own_v[g]).mean()))
                other_sum = total - rv[mine].sum(axis=0)
                g_other.append(float(own_v[g] @ other_sum) / others)

    def mean(x: Sequence[float]) -> float:
        return float(np.mean(x)) if len(x) else float("nan")

    margins = np.array(g_cited) - np.array(g_other)
    return PersonaQuality(
        items=len(items),
        personas=n,
        personas_per_item=n / len(items),
        valid_evidence=valid / n,
        coverage=mean(coverages),
        coverage_min=float(min(coverages)) if coverages else float("nan"),
        diversity_mean=mean(div_means),
        diversity_max=mean(div_maxes),
        diversity_text=div_label,
        near_duplicate_items=mean(dup_items),
        near_duplicate_pairs=mean(dup_pairs),
        rationale_is_description=float(is_desc.mean()),
        rationale_is_sibling=float(is_sib.mean()),
        rationale_restated=float((is_desc | is_sib).mean()),
        rationale_differs_from_description=float(1 - is_desc.mean()),
        evidence_overlap=mean(overlaps),
        evidence_shared_pairs=mean(shared),
        empty_fields=empty,
        cut_fields=cut,
        grounded_cited=mean(g_cited),
        grounded_other=mean(g_other),
        grounded_margin=mean(margins),
        grounded_share=mean(margins > 0),
        thresholds=_thresholds(),
        examples=dict(ex),
    )


def _thresholds() -> dict[str, float]:
    return {
        "near_identical": NEAR_IDENTICAL,
        "near_duplicate_set": NEAR_DUPLICATE_SET,
        "near_duplicate_pair": NEAR_DUPLICATE_PAIR,
        "shared_evidence": SHARED_EVIDENCE,
    }


def _clip(text: str, limit: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
