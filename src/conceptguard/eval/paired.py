"""Is stack A better than stack B here? A paired comparison on the same prompts and seeds.

Images of two stacks in one run share their prompts and seeds, so each pair of images is one
trial: McNemar's exact test counts the pairs where only A showed the concept and those where
only B did. Lower concept rates are better; blocked images count as "concept absent".
"""

from __future__ import annotations

from pathlib import Path

from conceptguard.errors import InvalidInputError
from conceptguard.eval.stats import mcnemar, rate_interval
from conceptguard.eval.store import Store

ALPHA = 0.05


def _shown(row: dict, judge: str) -> bool:
    return bool(row["judges"][judge]["present"]) and not row["blocked"]


def _main_judge(rows: list[dict]) -> str:
    names = list(rows[0]["judges"])
    return "oracle" if "oracle" in names else names[0]


def compare_stacks(run: str | Path, a: str, b: str, judge: str | None = None) -> list[dict]:
    """One entry per (concept, prompt set) both stacks were measured on, then one per prompt set
    over every concept: both concept rates with Wilson intervals, the discordant pairs, McNemar's
    p-value and the answer."""
    path = Path(run) / "results.sqlite"
    if not path.is_file():
        raise InvalidInputError(f"no bench results in {run} (results.sqlite missing)")
    store = Store(path)
    try:
        stacks = {r["stack"] for r in store.rows()}
        for s in (a, b):
            if s not in stacks:
                raise InvalidInputError(f"stack {s!r} is not in {run}; it has {', '.join(sorted(stacks))}")
        pairs: dict[tuple[str, str], list[tuple[dict, dict]]] = {}
        mine = {(r["concept"], r["set_id"], r["prompt_index"], r["image_index"], r["seed"]): r for r in store.rows(a)}
        for r in store.rows(b):
            other = mine.get((r["concept"], r["set_id"], r["prompt_index"], r["image_index"], r["seed"]))
            if other is not None:
                pairs.setdefault((r["concept"], r["prompt_set"]), []).append((other, r))
    finally:
        store.close()
    if not pairs:
        raise InvalidInputError(f"{a!r} and {b!r} share no prompts and seeds in {run}")
    judge = judge or _main_judge([next(iter(pairs.values()))[0][0]])
    out = [_compare(a, b, concept, pset, found, judge) for (concept, pset), found in sorted(pairs.items())]
    for pset in sorted({p for _, p in pairs}):
        pooled = [pair for (_, p), found in pairs.items() if p == pset for pair in found]
        out.append(_compare(a, b, "all", pset, pooled, judge))
    return out


def _compare(a: str, b: str, concept: str, prompt_set: str, pairs: list[tuple[dict, dict]], judge: str) -> dict:
    shown_a = [_shown(x, judge) for x, _ in pairs]
    shown_b = [_shown(y, judge) for _, y in pairs]
    a_only = sum(x and not y for x, y in zip(shown_a, shown_b))
    b_only = sum(y and not x for x, y in zip(shown_a, shown_b))
    p = mcnemar(a_only, b_only)
    rate_a, rate_b = sum(shown_a) / len(pairs), sum(shown_b) / len(pairs)
    if p >= ALPHA:
        answer = "no difference detected"
    else:
        answer = f"{a} better" if rate_a < rate_b else f"{b} better"
    return {"concept": concept, "prompt_set": prompt_set, "n_pairs": len(pairs), "judge": judge,
            "stack_a": a, "rate_a": round(rate_a, 4), "rate_a_ci": rate_interval(shown_a),
            "stack_b": b, "rate_b": round(rate_b, 4), "rate_b_ci": rate_interval(shown_b),
            "only_a": a_only, "only_b": b_only, "p_value": round(p, 6), "answer": answer}
