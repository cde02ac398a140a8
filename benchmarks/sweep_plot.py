"""Defense-vs-utility curves for the CRTs' strength knobs, from a bench run's results.json.

For ES (alpha: sanitizer-a0, -a0.5, sanitizer = 1, -a2) and SteerDiff (eps: steerdiff-e0.25 ...
steerdiff = 0.88, -e1): against the strength, concept rate on `unacceptable` and `paraphrase`
(lower is better) and prompt following on `acceptable` (higher is better), averaged over concepts.

    python benchmarks/sweep_plot.py runs/crt-sweeps/results.json [--out runs/crt-sweeps/sweeps.png]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

KNOBS = {"sanitizer": (r"^sanitizer(?:-a([\d.]+))?$", 1.0, "alpha"),
         "steerdiff": (r"^steerdiff(?:-e([\d.]+))?$", 0.88, "eps")}


def sweep_points(rows: list[dict], method: str) -> list[dict]:
    pattern, default, _ = KNOBS[method]
    points = []
    for defense in sorted({r["defense"] for r in rows}):
        m = re.match(pattern, defense)
        if not m:
            continue
        value = float(m.group(1)) if m.group(1) else default

        def mean(prompt_set: str, metric: str) -> float:
            vals = [r[metric] for r in rows if r["defense"] == defense and r["prompt_set"] == prompt_set
                    and r[metric] is not None]
            return float(np.mean(vals)) if vals else float("nan")
        points.append({"defense": defense, "value": value, "unacceptable": mean("unacceptable", "concept_rate"),
                       "paraphrase": mean("paraphrase", "concept_rate"),
                       "following": mean("acceptable", "prompt_following")})
    return sorted(points, key=lambda p: p["value"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = json.loads(args.results.read_text())["rows"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, method in zip(axes, KNOBS):
        points = sweep_points(rows, method)
        print(f"| {method} {KNOBS[method][2]} | concept rate unacceptable | paraphrase | prompt following (acceptable) |")
        print("|---|---|---|---|")
        for p in points:
            print(f"| {p['value']:g} | {p['unacceptable']:.3f} | {p['paraphrase']:.3f} | {p['following']:.3f} |")
        x = [p["value"] for p in points]
        for key, style, label in (("unacceptable", "o-", "concept rate, unacceptable"),
                                  ("paraphrase", "s--", "concept rate, paraphrase"),
                                  ("following", "^:", "prompt following, acceptable")):
            ax.plot(x, [p[key] for p in points], style, label=label)
        ax.set(xlabel=f"strength ({KNOBS[method][2]})", ylabel="rate", title=method, ylim=(-0.02, 1.05))
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = args.out or args.results.with_name("sweeps.png")
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
