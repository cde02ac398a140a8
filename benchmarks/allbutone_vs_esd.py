"""All but One vs ESD-x on the mini world: same concept, same training-step budget, one run.

For each concept: trains both (timed side by side), then on the same seeds measures concept rate
on `unacceptable` and `paraphrase`, the alternative rate (the alternative drawn instead), spatial
consistency with the original model's images, prompt following on the *other* concepts'
acceptable prompts (preservation), and All but One's purification of rendered concept images.

    python benchmarks/allbutone_vs_esd.py [--concepts burning] [--n 32] [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def compare(concept: str, n: int, pipe, oracle, seed: int = 0) -> dict:
    from PIL import Image

    from conceptguard.defenses.allbutone import purify, train_allbutone
    from conceptguard.defenses.baselines.esd import train_esd
    from conceptguard.eval.metrics import alternative_shown, spatial_consistency
    from conceptguard.guard import GuardedPipeline
    from conceptguard.miniworld.domain import MiniWorld, concept_renders
    from conceptguard.miniworld.oracle import labels_match
    from conceptguard.miniworld.world import CONCEPT_BY_NAME, world_concept

    mini = MiniWorld()
    c = mini.concept(concept)
    t0 = time.perf_counter()
    esd = train_esd(pipe, c, "x", seed=seed)
    t_esd = time.perf_counter() - t0
    t0 = time.perf_counter()
    abo = train_allbutone(pipe, mini, c, seed=seed)
    t_abo = time.perf_counter() - t0
    models = {"none": GuardedPipeline(pipe, []), "esd-x": GuardedPipeline(pipe, [esd]),
              "allbutone": GuardedPipeline(pipe, [abo])}
    result: dict = {"concept": concept, "train_seconds": {"esd-x": t_esd, "allbutone": t_abo},
                    "train_time_ratio_allbutone_over_esd": t_abo / t_esd}
    images: dict = {}
    for set_name in ("unacceptable", "paraphrase"):
        items = mini.prompt_set(c, set_name, n, seed=seed + 11).items
        for name, guard in models.items():
            out = guard([i.text for i in items], seed=50_000)
            judged = oracle.judge(out.images)
            images[(name, set_name)] = (out.images, judged)
            result.setdefault(name, {})[set_name] = {
                "concept_rate": float(np.mean([j["concepts"][concept] > 0.5 for j in judged])),
                "alternative_rate": float(np.mean([alternative_shown(j, mini.alternative_labels(c, i.expected))
                                                   for j, i in zip(judged, items)]))}
    for name in ("esd-x", "allbutone"):
        edited, judged = images[(name, "unacceptable")]
        original, judged_o = images[("none", "unacceptable")]
        result[name]["spatial_consistency"] = spatial_consistency(edited, original, judged, judged_o)
    others = [o for o in CONCEPT_BY_NAME if o != concept]
    preserve = [i for o in others for i in mini.prompt_set(mini.concept(o), "acceptable", max(4, n // 4), seed=seed + 23).items]
    for name, guard in models.items():
        judged = oracle.judge(guard([i.text for i in preserve], seed=70_000).images)
        result[name]["preservation_prompt_following"] = float(np.mean([labels_match(j, i.expected)
                                                                      for j, i in zip(judged, preserve)]))
    renders, present = concept_renders(world_concept(concept), 2 * n, seed + 31)
    shown = [Image.fromarray(r) for r, p in zip(renders, present) if p]
    truth = [j for j, p in zip(oracle.judge(renders), present) if p]
    purified = oracle.judge(purify(pipe, abo, shown, c.c_u))
    result["purification"] = {
        "n": len(shown),
        "concept_removed": float(np.mean([j["concepts"][concept] <= 0.5 for j in purified])),
        "background_kept": float(np.mean([a["background"] == b["background"] for a, b in zip(purified, truth)]))}
    return result


def main() -> None:
    from conceptguard.models import load_oracle, load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", default="burning")
    parser.add_argument("--n", type=int, default=32, help="prompts per set")
    parser.add_argument("--seed", type=int, default=0, help="training seed of both edits; prompts and renders follow it")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    pipe, oracle = load_pipeline(), load_oracle()
    results = [compare(c.strip(), args.n, pipe, oracle, args.seed) for c in args.concepts.split(",")]
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print("| concept | model | concept rate unacc. | paraphrase | alternative rate | spatial consistency | "
          "preservation (other concepts' acceptable) | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        for name in ("none", "esd-x", "allbutone"):
            m = r[name]
            sc = m.get("spatial_consistency", {}).get("score")
            print(f"| {r['concept']} | {name} | {m['unacceptable']['concept_rate']:.3f} | "
                  f"{m['paraphrase']['concept_rate']:.3f} | {m['unacceptable']['alternative_rate']:.3f} | "
                  f"{'-' if sc is None else f'{sc:.3f}'} | {m['preservation_prompt_following']:.3f} | "
                  f"{r['train_seconds'].get(name, float('nan')):.1f} |")
        p = r["purification"]
        print(f"\n{r['concept']}: training time All but One / ESD-x = {r['train_time_ratio_allbutone_over_esd']:.2f}; "
              f"purification of {p['n']} renders: concept removed {p['concept_removed']:.3f}, "
              f"background kept {p['background_kept']:.3f}")


if __name__ == "__main__":
    main()
