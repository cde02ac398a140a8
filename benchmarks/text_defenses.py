"""Text-side quality of the embedding defenses, per mini-world concept (no images needed).

SteerDiff's identifier: share of prompts flagged in `unacceptable` and `paraphrase` (recall) and
in `acceptable` (false positives). Embedding Sanitizer: on held-out prompts that contain the
concept (phrasings the sanitizer never saw), is the highest-scored token inside the concept
phrase; on benign prompts, is every token's score below 0.5. The defenses are the ones the bench
uses (trained on first use, cached).

    python benchmarks/text_defenses.py [--n 200] [--json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def steerdiff_rates(steer, pipe, concept: str, n: int) -> dict:
    from conceptguard.defenses.text_data import encode
    from conceptguard.miniworld.domain import MiniWorld

    mini = MiniWorld()
    out = {}
    for name in ("unacceptable", "paraphrase", "acceptable"):
        prompts = mini.prompt_set(mini.concept(concept), name, n, seed=777).prompts
        hidden, ids = encode(pipe.text_encoder, pipe.tokenizer, prompts)
        _, tops = steer.steer(hidden, ids)
        out[name] = float(np.mean([t > steer.threshold for t in tops]))
    return out


def sanitizer_checks(sanitizer, pipe, concept: str, n: int) -> dict:
    from conceptguard.defenses.text_data import aligned_twins, encode
    from conceptguard.miniworld.domain import MiniWorld
    from conceptguard.miniworld.world import concept_prompts, world_concept

    wc = world_concept(concept)
    held = [p for p, _ in concept_prompts(wc, "heldout", n, seed=555)]
    twins = [p for p, _ in concept_prompts(wc, "acceptable", n, seed=555)]  # same attributes, c_a instead
    hidden, ids = encode(pipe.text_encoder, pipe.tokenizer, held)
    _, twin_ids = encode(pipe.text_encoder, pipe.tokenizer, twins)
    _, phrase = aligned_twins(ids, twin_ids, pipe.tokenizer.eos_token_id)
    _, scores = sanitizer.sanitize(hidden, ids)
    top = scores.argmax(dim=1)
    inside = [bool(phrase[k, top[k]]) for k in range(len(held))]
    mini = MiniWorld()
    benign = mini.prompt_set(mini.concept(concept), "acceptable", n, seed=777).prompts
    hb, ib = encode(pipe.text_encoder, pipe.tokenizer, benign)
    _, sb = sanitizer.sanitize(hb, ib)
    return {"top_token_in_phrase": float(np.mean(inside)),
            "benign_below_half": float((sb.max(dim=1).values < 0.5).float().mean())}


def main() -> None:
    from conceptguard.defenses import BuildContext, build_defenses
    from conceptguard.miniworld.data import cache_dir
    from conceptguard.miniworld.domain import MiniWorld
    from conceptguard.miniworld.world import CONCEPT_BY_NAME
    from conceptguard.models import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="prompts per set")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    pipe = load_pipeline()
    mini = MiniWorld()
    ctx = BuildContext(pipe, mini, cache_dir())
    results = []
    for name in CONCEPT_BY_NAME:
        c = mini.concept(name)
        steer, sanitizer = build_defenses("steerdiff", c, ctx)[0], build_defenses("sanitizer", c, ctx)[0]
        results.append({"concept": name, "steerdiff_flagged": steerdiff_rates(steer, pipe, name, args.n),
                        "sanitizer": sanitizer_checks(sanitizer, pipe, name, args.n)})
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print("| concept | SteerDiff flags unacceptable | paraphrase | acceptable (FPR) | ES top token in phrase (held-out) | ES benign max < 0.5 |")
    print("|---|---|---|---|---|---|")
    for r in results:
        f, s = r["steerdiff_flagged"], r["sanitizer"]
        print(f"| {r['concept']} | {f['unacceptable']:.3f} | {f['paraphrase']:.3f} | {f['acceptable']:.3f} | "
              f"{s['top_token_in_phrase']:.3f} | {s['benign_below_half']:.3f} |")


if __name__ == "__main__":
    main()
