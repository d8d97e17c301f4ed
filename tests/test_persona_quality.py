"""Persona quality (issue #29): each measure on hand-made persona sets with known answers, the set check
the validator applies to a fresh answer, and its one retry with the reason fed back.

The embedder here is a bag of words: every distinct word is its own axis, so the cosine of two texts is
|shared words| / sqrt(|words of a| * |words of b|), and each expected value below can be worked out by hand.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from persona4rec.config import LLMConfig, ReasonConfig
from persona4rec.reasoning import answers, quality
from persona4rec.reasoning.prompts import load_prompts
from persona4rec.reasoning.solve import solve
from persona4rec.reasoning.units import persona_unit
from tests.scripted_engine import ScriptedEngine


def bag_of_words():
    vocab: dict[str, int] = {}

    def embed(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 512), dtype=np.float64)
        for row, text in enumerate(texts):
            for word in {w.strip(".,;:!?'\"").lower() for w in text.split()} - {""}:
                out[row, vocab.setdefault(word, len(vocab))] = 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)

    return embed


def persona(item, name, description, rationale, evidence, index=1):
    return {
        "item_id": item,
        "persona_index": index,
        "name": name,
        "description": description,
        "rationale": rationale,
        "evidence": list(evidence),
    }


def review(item, rid, text, rank):
    return {"item_id": item, "review_id": rid, "text": text, "sample_rank": rank}


def test_valid_evidence_counts_personas_citing_only_reviews_their_item_showed():
    reviews = [review("A", "a1", "x", 0), review("A", "a2", "y", 1), review("B", "b1", "z", 0)]
    personas = [
        persona("A", "P", "d one", "r one", ["a1"], 1),
        persona("A", "Q", "d two", "r two", ["a1", "b1"], 2),  # another item's review
        persona("B", "R", "d three", "r three", [], 1),  # nothing cited
        persona("B", "S", "d four", "r four", ["b1"], 2),
    ]
    q = quality.measure(personas, reviews, bag_of_words())
    assert q.valid_evidence == 0.5
    assert q.personas == 4 and q.items == 2 and q.personas_per_item == 2.0


def test_coverage_is_the_share_of_shown_reviews_some_persona_cites_averaged_over_items():
    reviews = [review("A", f"a{k}", f"text {k}", k) for k in range(4)] + [
        review("B", "b0", "u", 0),
        review("B", "b1", "v", 1),
    ]
    personas = [
        persona("A", "P", "d", "r", ["a0", "a1"], 1),
        persona("A", "Q", "e", "s", ["a1"], 2),
        persona("B", "R", "f", "t", ["b0", "b1"], 1),
    ]
    q = quality.measure(personas, reviews, bag_of_words())
    assert q.coverage == pytest.approx((2 / 4 + 2 / 2) / 2)
    assert q.coverage_min == 0.5


def test_only_the_reviews_the_prompt_showed_count():
    reviews = [review("A", f"a{k}", f"text {k}", k) for k in range(4)]
    personas = [persona("A", "P", "d", "r", ["a0"], 1), persona("A", "Q", "e", "s", ["a3"], 2)]
    q = quality.measure(personas, reviews, bag_of_words(), reviews_per_item=2)
    assert q.coverage == 0.5  # a0 of a0, a1
    assert q.valid_evidence == 0.5  # a3 was not shown


def test_diversity_is_the_mean_and_max_pairwise_cosine_within_each_item():
    personas = [
        # item A: two personas with the same words -> cosine 1
        persona("A", "Gigging Bassist", "plays loud shows", "needs volume", ["a"], 1),
        persona("A", "Gigging Bassist", "plays loud shows", "needs volume", ["a"], 2),
        # item B: three personas sharing no word -> cosines 0
        persona("B", "Alpha", "one two", "three", ["b"], 1),
        persona("B", "Beta", "four five", "six", ["b"], 2),
        persona("B", "Gamma", "seven eight", "nine", ["b"], 3),
        # item C: a single persona has no pair and does not count
        persona("C", "Solo", "ten", "eleven", ["c"], 1),
    ]
    reviews = [review(i, i.lower(), "w", 0) for i in "ABC"]
    q = quality.measure(personas, reviews, bag_of_words())
    assert q.diversity_mean == pytest.approx(0.5)  # (1 + 0) / 2
    assert q.diversity_max == pytest.approx(0.5)
    assert q.near_duplicate_items == 0.5  # A is one audience renamed, B is not
    assert "own words" in q.diversity_text


def test_diversity_on_the_indexed_passage_includes_the_items_summary():
    personas = [
        persona("B", "Alpha", "one", "two", ["b"], 1),
        persona("B", "Beta", "three", "four", ["b"], 2),
    ]
    reviews = [review("B", "b", "w", 0)]
    plain = quality.measure(personas, reviews, bag_of_words())
    indexed = quality.measure(personas, reviews, bag_of_words(), summaries={"B": "a shared summary"})
    assert plain.diversity_mean == 0.0
    assert indexed.diversity_mean > 0.3  # the template words and the summary are shared
    assert "index embeds" in indexed.diversity_text


def test_restated_rationales_against_the_description_and_against_a_sibling():
    opener = "This persona appreciates this item because "
    personas = [
        # rationale = description once the fixed opener is stripped
        persona("A", "P", "strings stay in tune for weeks", opener + "strings stay in tune for weeks", ["a"], 1),
        # Q and R share one rationale (different openers, same words after them)
        persona("A", "Q", "plays jazz nightly", opener + "the finish resists sweat", ["a"], 2),
        persona("A", "R", "teaches kids", "This persona is disappointed because the finish resists sweat", ["a"], 3),
        # S is fine
        persona("A", "S", "records podcasts", "the cable is quiet", ["a"], 4),
    ]
    q = quality.measure(personas, [review("A", "a", "w", 0)], bag_of_words())
    assert q.rationale_is_description == 0.25
    assert q.rationale_is_sibling == 0.5
    assert q.rationale_restated == 0.75
    assert q.rationale_differs_from_description == 0.75
    assert q.examples["same rationale"] and q.examples["rationale restates description"]


def test_evidence_overlap_between_siblings():
    reviews = [review("A", f"a{k}", "w", k) for k in range(4)]
    personas = [
        persona("A", "P", "d", "r", ["a0", "a1"], 1),
        persona("A", "Q", "e", "s", ["a0", "a1"], 2),  # P-Q: Jaccard 1
        persona("A", "R", "f", "t", ["a2", "a3"], 3),  # P-R, Q-R: 0
    ]
    q = quality.measure(personas, reviews, bag_of_words())
    assert q.evidence_overlap == pytest.approx(1 / 3)
    assert q.evidence_shared_pairs == pytest.approx(1 / 3)


def test_empty_and_cut_fields_follow_the_validators_rule():
    personas = [
        persona("A", "P", "Wants a quiet cable for what", "It is quiet.", ["a"], 1),  # cut on "what"
        persona("A", "Q", "Records at home", "The jack holds firm, ", ["a"], 2),  # cut on a comma
        persona("A", " ", "Plays out", "It is loud", ["a"], 3),  # empty name; prose without a stop is fine
    ]
    q = quality.measure(personas, [review("A", "a", "w", 0)], bag_of_words())
    assert (q.empty_fields, q.cut_fields) == (1, 2)
    assert q.meets("cut_fields") is False


def test_groundedness_compares_cited_reviews_with_other_items_reviews():
    reviews = [
        review("A", "a1", "bright tone long sustain", 0),
        review("B", "b1", "sturdy stand folds flat", 0),
    ]
    personas = [
        # A's persona uses exactly its review's words; B's shares nothing with its own review but all of A's
        persona("A", "Bright", "tone", "long sustain", ["a1"], 1),
        persona("B", "Bright", "tone", "long sustain", ["b1"], 1),
    ]
    q = quality.measure(personas, reviews, bag_of_words())
    # own text "Bright. tone long sustain" = the words of a1 -> cosine 1 with a1, 0 with b1
    assert q.grounded_cited == pytest.approx(0.5)  # (1 + 0) / 2
    assert q.grounded_other == pytest.approx(0.5)  # (0 + 1) / 2
    assert q.grounded_margin == pytest.approx(0.0)  # (+1 - 1) / 2
    assert q.grounded_share == 0.5


def test_the_report_names_targets_and_serialises():
    reviews = [review("A", "a0", "w", 0), review("A", "a1", "x", 1)]
    personas = [
        persona("A", "Night Gigger", "plays bars late.", "the clip light helps on dark stages.", ["a0"], 1),
        persona("A", "Studio Tracker", "records takes at home.", "it holds pitch between takes.", ["a1"], 2),
    ]
    q = quality.measure(personas, reviews, bag_of_words())
    d = json.loads(json.dumps(q.to_dict()))
    assert d["targets"]["valid_evidence"]["met"] and d["targets"]["coverage"]["met"]
    assert d["targets"]["cut_fields"]["met"] and d["targets"]["diversity_mean"]["met"]
    md = q.markdown("v3")
    assert md.startswith("## v3") and "review coverage" in md and "missed" not in md


def test_no_personas_measures_nothing_without_failing():
    q = quality.measure([], [review("A", "a", "w", 0)], bag_of_words())
    assert q.personas == 0 and math.isnan(q.coverage)
    assert q.to_dict()["coverage"] is None and "n/a" in q.markdown()


# ------------------------------------------------------------------------------------------ the set check


def _set(*rows):
    return [answers.Persona(n, d, r, list(e)) for n, d, r, e in rows]


def _defects(personas, n_reviews=4):
    return quality.answer_defects(personas, bag_of_words(), n_reviews=n_reviews)


def test_one_description_with_the_noun_swapped_is_one_audience():
    body = "who is looking for extra cords for good price and a cable that looks great"
    same_why = "This persona appreciates this item because it is well made and looks great."
    personas = _set(
        ("Guitar Enthusiast", f"A guitar enthusiast {body}.", same_why, [1, 2]),
        ("Guitar Teacher", f"A guitar teacher {body}.", same_why, [1, 2]),
        ("Guitar Repairer", f"A guitar repairer {body}.", same_why, [1, 2]),
    )
    found = " | ".join(_defects(personas))
    assert "one kind of customer" in found
    assert "same rationale" in found
    assert "mostly the same reviews" in found


def test_distinct_audiences_pass_the_set_check():
    personas = _set(
        ("Gigging Bassist", "Plays loud bar shows every weekend.", "The jack stays seated when stepped on.", [1, 2]),
        ("Home Recorder", "Tracks demos in a spare room.", "No hum reaches the interface.", [3]),
        ("Let Down Buyer", "Bought two that crackled within weeks.", "Solder joints failed early.", [4]),
    )
    assert _defects(personas) == []


def test_a_rationale_restating_its_description_is_a_defect():
    personas = _set(
        (
            "Gigging Bassist",
            "Plays loud bar shows every weekend.",
            "This persona appreciates this item because plays loud bar shows every weekend.",
            [1],
        ),  # fmt: skip
        ("Home Recorder", "Tracks demos in a spare room.", "No hum reaches the interface.", [2]),
    )
    assert ["restates its description" in d for d in _defects(personas)] == [True]


def test_siblings_citing_mostly_the_same_reviews_is_a_defect():
    personas = _set(
        ("Gigging Bassist", "Plays loud bar shows.", "The jack stays seated.", [1, 2, 3]),
        ("Home Recorder", "Tracks demos at home.", "No hum reaches the interface.", [1, 2, 3, 4]),
    )
    assert [d for d in _defects(personas) if "same reviews" in d]
    personas[1].evidence = [3, 4]
    assert _defects(personas) == []


def test_two_descriptions_alike_but_for_the_noun_are_one_customer_even_when_the_set_is_not():
    body = "who loves high end cables with gold plated plugs and a lifetime warranty that replaces broken cables free"
    personas = _set(
        ("Guitar Enthusiast", f"A guitar enthusiast {body}.", "Solder joints survive stage falls.", [1]),
        ("Music Store Owner", f"A music store owner {body}.", "Returns cost the shop nothing.", [2]),
        ("Podcast Host", "Records weekly shows at a desk.", "The braid keeps hum out of recordings.", [3]),
        ("Drum Teacher", "Teaches children in a garage studio.", "The ends take rough handling daily.", [4]),
    )
    found = _defects(personas)
    assert [d for d in found if "same description but for the name" in d]
    assert not [d for d in found if "one kind of customer" in d]


# ------------------------------------------------------------------------------------------ the retry


def _item():
    return {"item_id": "I1", "title": "Cable", "categories": [], "has_metadata": True}


def _samples(n=4):
    return [
        {"review_id": f"r{k}", "item_id": "I1", "user_id": f"u{k}", "rating": 5.0, "title": None,
         "text": f"Review number {k} of this cable.", "sample_rank": k}
        for k in range(n)
    ]  # fmt: skip


def _unit(version):
    return persona_unit(_item(), _samples(), load_prompts(version), LLMConfig(), ReasonConfig())


ALIKE = {
    "summary": "A guitar cable.",
    "personas": [
        {"name": n, "description": f"A {n.lower()} who wants a cable that looks great.",
         "rationale": "This persona appreciates this item because it looks great.", "evidence": [1, 2]}
        for n in ("Guitar Teacher", "Guitar Shopper")
    ],
}  # fmt: skip
DISTINCT = {
    "summary": "A guitar cable.",
    "personas": [
        {"name": "Gigging Bassist", "description": "Plays loud bar shows every weekend.",
         "rationale": "The jack stays seated when stepped on.", "evidence": [1, 2]},
        {"name": "Home Recorder", "description": "Tracks demos in a spare room.",
         "rationale": "No hum reaches the interface.", "evidence": [3, 4]},
    ],
}  # fmt: skip


def test_prompt_v3_asks_for_the_set_check_and_v1_does_not():
    assert load_prompts("v3").distinct_personas and not load_prompts("v1").distinct_personas
    assert _unit("v3").distinct and not _unit("v1").distinct
    assert _unit("v3").key != _unit("v1").key


def test_prompt_v3_asks_for_each_personas_evidence_before_its_text():
    v1, v3 = _unit("v1"), _unit("v3")
    fields = lambda u: list(u.schema["properties"]["personas"]["items"]["properties"])  # noqa: E731
    assert fields(v3) == ["evidence", "name", "description", "rationale"]
    assert fields(v1) == ["name", "description", "rationale", "evidence"]  # v1's schema (and keys) unchanged
    assert answers.without_early_ends(v3.schema)["properties"]["personas"]["items"]["required"][0] == "evidence"


def test_alike_personas_are_retried_once_with_the_reason_then_the_distinct_answer_is_kept():
    engine = ScriptedEngine(lambda r, attempt: json.dumps(ALIKE if attempt == 1 else DISTINCT))
    [row] = solve(engine, [_unit("v3")], max_attempts=3, embed=bag_of_words())
    assert row["status"] == "ok" and row["attempts"] == 2
    feedback = engine.requests[1].messages[-1]["content"]
    assert "not_distinct" in feedback and "one kind of customer" in feedback
    payload = json.loads(row["payload"])
    assert [p["name"] for p in payload["personas"]] == ["Gigging Bassist", "Home Recorder"]
    assert "notes" not in payload


def test_personas_still_alike_after_the_one_retry_are_kept_with_a_note():
    engine = ScriptedEngine(lambda r, attempt: json.dumps(ALIKE))
    [row] = solve(engine, [_unit("v3")], max_attempts=3, embed=bag_of_words())
    assert row["status"] == "ok" and row["attempts"] == 2  # one retry, not the whole budget
    assert any(n.startswith("not distinct:") for n in json.loads(row["payload"])["notes"])


def test_a_held_answer_survives_a_retry_that_breaks():
    engine = ScriptedEngine(lambda r, attempt: json.dumps(ALIKE) if attempt == 1 else "not json")
    [row] = solve(engine, [_unit("v3")], max_attempts=2, embed=bag_of_words())
    assert row["status"] == "ok"
    assert any(n.startswith("not distinct:") for n in json.loads(row["payload"])["notes"])


def test_v1_is_not_checked_as_a_set():
    engine = ScriptedEngine(lambda r, attempt: json.dumps(ALIKE))
    [row] = solve(engine, [_unit("v1")], max_attempts=3, embed=bag_of_words(), dedup_threshold=1.01)
    assert row["status"] == "ok" and row["attempts"] == 1


def test_a_rationale_ending_on_what_is_cut():
    data = {
        "personas": [
            {"name": "P", "description": "Plays shows.", "rationale": "It is exactly what", "evidence": [1]},
            {"name": "Q", "description": "Records at home.", "rationale": "It is quiet.", "evidence": [2]},
        ]
    }
    with pytest.raises(answers.AnswerError) as exc:
        answers.parse_personas(data, low=2, high=2, n_reviews=2, name_chars=60, text_chars=400, summary=False)
    assert exc.value.code == "cut_field"
