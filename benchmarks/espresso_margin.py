"""Espresso before vs after fine-tuning: accuracy and certified radii on fresh mini-SD images.

For every mini-world concept: the mini SD draws images for prompts with the concept (all its
phrasings) and for their acceptable twins, on seeds that fine-tuning never saw; the oracle says
what each image really shows; the un-fine-tuned and the fine-tuned filter are certified on the
same images. Fine-tuned filters come from the bench cache (trained there on first use).

    python benchmarks/espresso_margin.py [--n 48] [--out runs/espresso-margin]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

EPS = (0.01, 0.02, 0.05)


def measure(concept: str, n: int, pipe, embedder, oracle, cache: Path) -> dict:
    from conceptguard.defenses import BuildContext, build_defenses
    from conceptguard.defenses.espresso import EspressoFilter, certified_accuracy
    from conceptguard.generation import generate
    from conceptguard.miniworld.domain import MiniWorld

    mini = MiniWorld()
    c = mini.concept(concept)
    pairs = mini.twin_prompts(c.model_copy(update={"train_phrasings": c.unacceptable + c.heldout_phrasings}), n,
                         seed=4242)
    prompts = [u for u, _ in pairs] + [a for _, a in pairs]
    images = generate(pipe, prompts, [900_000 + i % n for i in range(len(prompts))])
    truth = np.array([j["concepts"][concept] > 0.5 for j in oracle.judge(images)])
    ctx = BuildContext(pipe, mini, cache)
    filters = {"espresso": EspressoFilter(embedder, [c]), "espresso-ft": build_defenses("espresso-ft", c, ctx)[0]}
    out = {"concept": concept, "n_images": len(images), "n_unacceptable": int(truth.sum())}
    for name, f in filters.items():
        cert = f.certify(images, truth, concept)
        correct, radius = cert["correct"], cert["radius"]
        out[name] = {"accuracy": float(correct.mean()),
                     "fnr": float(np.mean(~correct[truth])) if truth.any() else None,
                     "fpr": float(np.mean(~correct[~truth])) if (~truth).any() else None,
                     "mean_radius_correct": float(radius[correct].mean()) if correct.any() else None,
                     "certified_accuracy": {str(e): certified_accuracy(radius, correct, e) for e in EPS},
                     "radii": radius.tolist(), "correct": correct.tolist()}
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["concept"] for r in results]
    x = np.arange(len(names))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, (which, color) in enumerate((("espresso", "tab:gray"), ("espresso-ft", "tab:blue"))):
        left.bar(x + (k - 0.5) * 0.38, [r[which]["mean_radius_correct"] or 0 for r in results], 0.38,
                 label=which, color=color)
        right.bar(x + (k - 0.5) * 0.38, [r[which]["accuracy"] for r in results], 0.38, label=which, color=color)
    left.set(xticks=x, xticklabels=names, ylabel="mean certified radius (correct images)")
    right.set(xticks=x, xticklabels=names, ylabel="accuracy", ylim=(0, 1.05))
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    from conceptguard.miniworld.data import cache_dir
    from conceptguard.miniworld.world import CONCEPT_BY_NAME
    from conceptguard.models import ClipEmbedder, load_clip, load_oracle, load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="prompt pairs per concept")
    parser.add_argument("--out", type=Path, default=Path("runs/espresso-margin"))
    parser.add_argument("--concepts", default=",".join(CONCEPT_BY_NAME))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pipe, embedder, oracle = load_pipeline(), ClipEmbedder(*load_clip()), load_oracle()
    results = [measure(c, args.n, pipe, embedder, oracle, cache_dir()) for c in args.concepts.split(",")]
    (args.out / "margin.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / "margin.png")
    print("| concept | images (with concept) | accuracy before | after | mean radius before | after | cert. acc @0.02 before | after |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        b, a = r["espresso"], r["espresso-ft"]
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"| {r['concept']} | {r['n_images']} ({r['n_unacceptable']}) | {b['accuracy']:.3f} | {a['accuracy']:.3f} | "
              f"{fmt(b['mean_radius_correct'])} | {fmt(a['mean_radius_correct'])} | "
              f"{b['certified_accuracy']['0.02']:.3f} | {a['certified_accuracy']['0.02']:.3f} |")
    print(f"wrote {args.out / 'margin.json'} and {args.out / 'margin.png'}")


if __name__ == "__main__":
    main()
