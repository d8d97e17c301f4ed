"""Copy the LLM answers a run made into a committed seed cache: only the keys the seed lacks, as one part.

    python benchmarks/seed_cache.py /work/runs/headline/amazon2014-musical-instruments/reason/cache \\
        benchmarks/headline-musical-instruments/reason-cache

A seed cache (``reason.seed_caches``) is a folder of result-cache parts that later runs read before any
LLM call. Copying a run's part files by hand would duplicate answers once the run compacts its cache;
this adds each answer once, so the committed folder grows by what is new and nothing else. Prints what
it added.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from persona4rec.reasoning.cache import ResultCache


def export(source: Path, seed: Path, since: str | None = None) -> tuple[int, Counter]:
    """Append to ``seed`` the rows of ``source`` whose keys it lacks, failed answers included (a later run
    keeps them as failed, as the run that made them did, unless it is asked to retry them), and the
    newer answer to a key the seed holds as failed (a ``--retry-failed`` run's; the later part wins when
    the seed is read). ``since`` (an ISO time) leaves out older answers, e.g. ones whose keys a code change
    has retired."""
    if not source.is_dir():
        raise SystemExit(f"{source}: no such cache folder")
    seed.mkdir(parents=True, exist_ok=True)
    have = ResultCache(seed).load()

    def wanted(key: str, row: dict) -> bool:
        if since is not None and row["created_at"] < since:
            return False
        old = have.get(key)
        return old is None or (old["status"] == "failed" and row["created_at"] > old["created_at"])

    new = [r for k, r in ResultCache(source).load().items() if wanted(k, r)]
    ResultCache(seed).append(new)
    return len(new), Counter(r["status"] for r in new)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="a run's cache folder (<artifacts>/<dataset>/reason/cache)")
    ap.add_argument("seed", type=Path, help="the committed seed folder to extend")
    ap.add_argument("--since", help="only answers created at or after this ISO time (UTC), e.g. 2026-11-27T03:41")
    args = ap.parse_args(argv)
    n, by_status = export(args.source, args.seed, args.since)
    print(f"added {n} answers to {args.seed} ({', '.join(f'{v} {k}' for k, v in by_status.items()) or 'nothing new'})")


if __name__ == "__main__":
    main()
