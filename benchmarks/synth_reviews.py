"""Write a synthetic review corpus in the Amazon 2014 JSON-lines format, for benchmarking ``p4r prepare``.

The corpus imitates the structure that drives prepare's cost, not the meaning of real reviews:

* user and item activity follow Zipf-like laws, so an iterative 5-core needs several passes and removes
  a large share of the reviews (about half at the default shape), as it does on raw Amazon categories;
* ratings are skewed to 5 stars like the 2014 Musical Instruments 5-core (68/20/7.5/2.5/2 %);
* texts are ~90 words on average (log-normal, median ~54, a few empty), cut from a pre-built stream of
  vocabulary words, so building a text costs one string slice;
* times fall on whole days from 2004 to mid-2014, weighted to later years, so ties within a user exist;
* a small share of lines is deliberately bad (truncated JSON, out-of-range or non-numeric ratings,
  missing user or item ids) or an exact copy of an earlier line, so every quarantine path is exercised.

The file is plain (uncompressed) JSON lines so that Spark can split it across tasks. The (user, item)
graph is drawn up front (16 bytes a review); lines are then built and written in chunks, so memory stays
flat at any size. The output is deterministic for a given ``--seed`` and size.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

CHUNK = 100_000  # reviews built and written at a time
RATINGS = np.array([5, 4, 3, 2, 1])
RATING_P = np.array([0.68, 0.20, 0.075, 0.025, 0.02])
FIRST_DAY = datetime(2004, 1, 1, tzinfo=UTC)
N_DAYS = (datetime(2014, 7, 23, tzinfo=UTC) - FIRST_DAY).days
GROWTH = 6.0  # reviews per day grow ~e^6 (x400) over the ten years, like Amazon's
POOL_WORDS = 1_000_000  # length of the word stream texts are cut from

_VOCAB_TEXT = """
the a and to it i is this for of my with that on you but in not was have as so are be very one they if
just great good sound guitar strings pedal amp cable mic stand tuner price quality use well works work
would can like all get or had at when from out up an more than no really much will easy well made nice
little bit don't recommend product buy bought used using play playing sounds tone better also only about
other after them which what these there time love fine need needs set does do did clean case music
studio stage gig bass acoustic electric neck fret frets string pick picks volume noise hum cheap
expensive worth money back loud quiet strap capo knob jack plug battery power supply solid light heavy
easy hard long short years months first last new old price perfect excellent problem problems issue
issues ever never still definitely instrument recording microphone adjustable comfortable replacement
professional performance connection everything something beginner keyboard headphones distortion
overdrive tremolo sustain intonation fretboard adapter shipping packaging purchase durable sturdy
recommended Amazon Fender Gibson Yamaha Martin Ernie Ball D'Addario Boss Shure Planet Waves Snark Dunlop
Elixir tuning tightening electronics feedback amplifier headstock bridge saddle pickups humbucker single
coil construction accessories reasonable unfortunately absolutely especially interference frequencies
"""
VOCAB = _VOCAB_TEXT.split()

_NAMES_TEXT = """
James Mary John Patricia Robert Jennifer Michael Linda William Elizabeth David Barbara Richard Susan
Joseph Jessica Thomas Sarah Charles Karen Chris Nancy Daniel Lisa Matthew Betty Anthony Sandra Mark
Ashley Paul Kimberly Steven Donna Andrew Emily Kenneth Michelle Joshua Carol Kevin Amanda Brian Melissa
"""
FIRST_NAMES = _NAMES_TEXT.split()

BAD_RATINGS = ["0.0", "6.0", '"five"', "null"]
BAD_KINDS = ("truncated", "bad_rating", "missing_user", "missing_item")


def parse_count(text: str) -> int:
    """``100k``, ``1M``, ``2.5M`` or a plain integer."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def zipf_draw(rng: np.random.Generator, n_values: int, size: int, exponent: float) -> np.ndarray:
    """``size`` ranks in 0..n_values-1 with P(rank r) ~ (r + 1) ** -exponent (0 < exponent < 1).

    Inverse of the continuous approximation of the Zipf CDF: one vectorised power, no table search.
    """
    e = 1.0 - exponent
    top = (n_values + 1.0) ** e - 1.0
    ranks = (1.0 + rng.random(size) * top) ** (1.0 / e) - 1.0
    return np.minimum(ranks.astype(np.int64), n_values - 1)


def draw_graph(
    rng: np.random.Generator, n: int, users: int, items: int, user_exp: float, item_exp: float
) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) index per review; an accidental repeat of a pair gets its item redrawn.

    One sort finds the repeats; redraws are then checked against the sorted set of pairs taken, so
    the few rounds the heavy users need cost little. Ids are shuffled so activity is not ordered by id.
    """
    user = zipf_draw(rng, users, n, user_exp)
    item = zipf_draw(rng, items, n, item_exp)
    key = user * items + item
    order = np.argsort(key)
    sorted_keys = key[order]
    first = np.ones(n, dtype=bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    taken, todo = sorted_keys[first], np.sort(order[~first])
    for _ in range(50):
        if not todo.size:
            break
        item[todo] = zipf_draw(rng, items, todo.size, item_exp)
        key = user[todo] * items + item[todo]
        pos = np.minimum(np.searchsorted(taken, key), taken.size - 1)
        fresh = np.zeros(todo.size, dtype=bool)
        fresh[np.unique(key, return_index=True)[1]] = True
        ok = fresh & (taken[pos] != key)
        new = np.sort(key[ok])
        taken = np.insert(taken, np.searchsorted(taken, new), new)
        todo = todo[~ok]
    return rng.permutation(users)[user], rng.permutation(items)[item]


def make_ids(prefix: str, count: int, width: int, salt: int) -> list[str]:
    """Unique, random-looking uppercase ids: a bijective hash of the index, in hex."""
    mask = (1 << (4 * width)) - 1
    mult = 0x9E3779B97F4A7C15 | 1
    return [f"{prefix}{((i + salt) * mult) & mask:0{width}X}" for i in range(count)]


def word_stream(rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """A long stream of vocabulary words in sentences, and the start offset of each word (plus the end)."""
    freq = np.arange(1, len(VOCAB) + 1, dtype=np.float64) ** -0.6
    picks = rng.choice(len(VOCAB), POOL_WORDS, p=freq / freq.sum())
    sentence_end = rng.random(POOL_WORDS) < 1 / 12
    words = [VOCAB[i] for i in picks.tolist()]
    words = [w + "." if end else w for w, end in zip(words, sentence_end.tolist(), strict=True)]
    starts = np.concatenate([[0], np.cumsum([len(w) + 1 for w in words])])
    return " ".join(words) + " ", starts


def day_strings() -> list[str]:
    """``reviewTime`` (``MM DD, YYYY``) for each day index."""
    return [(FIRST_DAY + timedelta(days=d)).strftime("%m %d, %Y") for d in range(N_DAYS + 1)]


def write_corpus(
    out: Path,
    n: int,
    *,
    seed: int = 0,
    users_per_review: float = 0.25,
    items_per_review: float = 0.05,
    user_exp: float = 0.7,
    item_exp: float = 0.8,
    bad_fraction: float = 0.001,
    dup_fraction: float = 0.0005,
) -> dict[str, int]:
    """Write ``n`` review lines to ``out``; returns how many lines were made bad or duplicated, by kind."""
    rng = np.random.default_rng(seed)
    n_users = max(10, int(n * users_per_review))
    n_items = max(10, int(n * items_per_review))
    user, item = draw_graph(rng, n, n_users, n_items, user_exp, item_exp)
    user_ids = [f'"{u}"' for u in make_ids("A", n_users, 13, seed)]
    item_ids = [f'"{i}"' for i in make_ids("B0", n_items, 8, seed + 1)]
    names = [f'"reviewerName": "{FIRST_NAMES[i % len(FIRST_NAMES)]} {chr(65 + i % 26)}.", ' for i in range(n_users)]
    for i in rng.choice(n_users, n_users // 300, replace=False).tolist():  # some users have no name
        names[i] = ""
    pool, starts = word_stream(rng)
    days = day_strings()
    ratings = [f"{r}.0" for r in RATINGS]
    day0 = int(FIRST_DAY.timestamp())
    made = dict.fromkeys((*BAD_KINDS, "duplicate"), 0)

    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for c, lo in enumerate(range(0, n, CHUNK)):
            crng = np.random.default_rng([seed, c])
            hi = min(n, lo + CHUNK)
            lines = _chunk_lines(
                crng,
                user[lo:hi],
                item[lo:hi],
                user_ids,
                item_ids,
                names,
                pool,
                starts,
                days,
                ratings,
                day0,
                bad_fraction,
                dup_fraction,
                made,
            )
            fh.write("\n".join(lines))
            fh.write("\n")
    return made


def _chunk_lines(
    rng: np.random.Generator,
    user: np.ndarray,
    item: np.ndarray,
    user_ids: list[str],
    item_ids: list[str],
    names: list[str],
    pool: str,
    starts: np.ndarray,
    days: list[str],
    ratings: list[str],
    day0: int,
    bad_fraction: float,
    dup_fraction: float,
    made: dict[str, int],
) -> list[str]:
    """The JSON lines of one chunk: columns drawn with numpy, then one f-string per line."""
    m = len(user)
    n_words = np.minimum(rng.lognormal(np.log(54), 1.0, m), 2000).astype(np.int64)
    n_words[rng.random(m) < 0.0007] = 0  # a few empty texts, as in the real data
    first = rng.integers(0, len(starts) - 2001, m)
    text_lo, text_hi = starts[first], starts[first + n_words] - 1
    n_title = rng.integers(1, 9, m)
    first_t = rng.integers(0, len(starts) - 10, m)
    title_lo, title_hi = starts[first_t], starts[first_t + n_title] - 1
    day = (np.log1p(rng.random(m) * np.expm1(GROWTH)) / GROWTH * N_DAYS).astype(np.int64)
    total = np.minimum(rng.geometric(0.45, m) - 1, 500)
    up = rng.binomial(total, 0.75)

    u_json = [user_ids[u] for u in user.tolist()]
    i_json = [item_ids[i] for i in item.tolist()]
    r_json = [ratings[k] for k in rng.choice(len(ratings), m, p=RATING_P).tolist()]

    # Deliberately bad lines: damage the fields now, truncate the line after it is built.
    bad = np.flatnonzero(rng.random(m) < bad_fraction)
    kinds = rng.integers(0, len(BAD_KINDS), len(bad))
    truncate = []
    for row, kind in zip(bad.tolist(), kinds.tolist(), strict=True):
        made[BAD_KINDS[kind]] += 1
        if kind == 0:
            truncate.append(row)
        elif kind == 1:
            r_json[row] = BAD_RATINGS[row % len(BAD_RATINGS)]
        elif kind == 2:
            u_json[row] = '""'
        else:
            i_json[row] = "null"

    lines = [
        f'{{"reviewerID": {u}, "asin": {i}, {names[un]}"helpful": [{hu}, {ht}], '
        f'"reviewText": "{pool[a:b]}", "overall": {r}, "summary": "{pool[c:d]}", '
        f'"unixReviewTime": {day0 + 86400 * dd}, "reviewTime": "{days[dd]}"}}'
        for u, i, un, hu, ht, a, b, r, c, d, dd in zip(
            u_json,
            i_json,
            user.tolist(),
            up.tolist(),
            total.tolist(),
            text_lo.tolist(),
            text_hi.tolist(),
            r_json,
            title_lo.tolist(),
            title_hi.tolist(),
            day.tolist(),
            strict=True,
        )
    ]
    for row in truncate:
        lines[row] = lines[row][: len(lines[row]) // 2]

    # Exact copies of an earlier line of the chunk (replacing this line's own review).
    is_bad = np.zeros(m, dtype=bool)
    is_bad[bad] = True
    dups = np.flatnonzero(rng.random(m) < dup_fraction)
    sources = dups - rng.integers(1, 1000, len(dups))
    for row, src in zip(dups.tolist(), sources.tolist(), strict=True):
        if src >= 0 and not is_bad[src] and not is_bad[row]:
            lines[row] = lines[src]
            made["duplicate"] += 1
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write a synthetic review corpus in the Amazon 2014 JSON-lines format (plain, splittable), "
        "for benchmarking `p4r prepare`. Reviews follow Zipf-like user/item activity, a 5-star "
        "rating skew, ~90-word texts and day-granular 2004-2014 times; ~0.1% of lines are bad or duplicated "
        "so that prepare's quarantine is exercised. Deterministic for a seed.",
        epilog="example: python benchmarks/synth_reviews.py --reviews 1M --out benchmarks/data/synth_1M.json",
    )
    parser.add_argument(
        "--reviews",
        type=parse_count,
        required=True,
        metavar="N",
        help="number of lines to write: an integer or 100k, 1M, 5M ...",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FILE",
        help="output file (plain JSON lines; .json so prepare reads it as Amazon 2014)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--users-per-review", type=float, default=0.25, help="distinct users as a share of reviews (default 0.25)"
    )
    parser.add_argument(
        "--items-per-review", type=float, default=0.05, help="distinct items as a share of reviews (default 0.05)"
    )
    parser.add_argument(
        "--bad-fraction", type=float, default=0.001, help="share of deliberately bad lines (default 0.001)"
    )
    parser.add_argument(
        "--dup-fraction",
        type=float,
        default=0.0005,
        help="share of lines that repeat an earlier line exactly (default 0.0005)",
    )
    args = parser.parse_args(argv)

    start = time.perf_counter()
    made = write_corpus(
        args.out,
        args.reviews,
        seed=args.seed,
        users_per_review=args.users_per_review,
        items_per_review=args.items_per_review,
        bad_fraction=args.bad_fraction,
        dup_fraction=args.dup_fraction,
    )
    elapsed = time.perf_counter() - start
    size = args.out.stat().st_size
    print(
        f"wrote {args.out}: {args.reviews:,} lines, {size / 1e6:,.1f} MB in {elapsed:.1f} s "
        f"({args.reviews / elapsed:,.0f} lines/s)"
    )
    print("deliberate damage: " + ", ".join(f"{k} {v:,}" for k, v in made.items()))


if __name__ == "__main__":
    main()
