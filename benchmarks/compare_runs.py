"""Compare two bench runs row by row: the same keys, image bytes, judge outputs, guard records.

    python benchmarks/compare_runs.py runs/eq-before runs/eq-after

Prints how many rows differ in each respect and exits 1 when any does (a behaviour-preserving
change must give 0). Use configs/equivalence.yaml with a fresh CONCEPTGUARD_CACHE for each run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import sys
from pathlib import Path


def rows(run: Path) -> dict[str, tuple]:
    db = sqlite3.connect(run / "results.sqlite")
    try:
        cur = db.execute("SELECT key, image, blocked, blocked_by, record, judges, expected FROM images")
        return {r[0]: r[1:] for r in cur}
    finally:
        db.close()


def digest(run: Path, rel: str) -> str:
    return hashlib.sha256((run / rel).read_bytes()).hexdigest()


def compare(a_run: Path, b_run: Path) -> dict:
    a, b = rows(a_run), rows(b_run)
    diff = {"missing": len(set(a) ^ set(b)), "image": 0, "judges": 0, "record": 0, "blocked": 0, "expected": 0}
    for key in sorted(set(a) & set(b)):
        (ia, ba, bya, ra, ja, ea), (ib, bb, byb, rb, jb, eb) = a[key], b[key]
        diff["image"] += digest(a_run, ia) != digest(b_run, ib)
        diff["judges"] += json.loads(ja) != json.loads(jb)
        diff["record"] += json.loads(ra) != json.loads(rb)
        diff["blocked"] += (ba, bya) != (bb, byb)
        diff["expected"] += json.loads(ea) != json.loads(eb)
    return {"rows_a": len(a), "rows_b": len(b), "differ": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args()
    result = compare(args.run_a, args.run_b)
    print(json.dumps(result, indent=1))
    sys.exit(1 if any(result["differ"].values()) else 0)


if __name__ == "__main__":
    main()
