"""Espresso's per-image cost against the SD-safety-checker-style filter on the same vision tower.

Part 1: both filters built on one CLIP ViT-L/14 (random weights from the config: only the cost
matters), checking a batch of 8 SD-sized images (512x512, resized by the CLIP processor). Each
runs one vision forward pass per image, then Espresso compares with two cached text embeddings
per concept and the safety checker with its concept embeddings and thresholds. The two are
timed interleaved in one run, once with one concept (the nudity preset) and once with the
paper's eleven; the ratio of the medians is printed (target <= 1.05).

Part 2: Espresso's share of the mini SD's generation time per image: the mini CLIP's filter on a
batch of mini-SD images against generating that batch (25 DDIM steps, guidance 7.5).

    python benchmarks/filter_cost.py [--reps 7] [--json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image
from timing import interleaved_medians  # benchmarks/timing.py

BATCH = 8


def vit_l14_embedder():
    """CLIP ViT-L/14's architecture with random weights, with the real CLIP tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from conceptguard.miniworld.paths import WEIGHTS_DIR
    from conceptguard.models import ClipEmbedder

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"),
        vision_config=dict(image_size=224, patch_size=14, hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=24, num_attention_heads=16, hidden_act="quick_gelu"),
        projection_dim=768)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 224},
                                                                 crop_size={"height": 224, "width": 224}),
                              tokenizer=CLIPTokenizer.from_pretrained(WEIGHTS_DIR / "pipeline" / "tokenizer"))
    return ClipEmbedder(CLIPModel(config), processor)


def random_images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def espresso_vs_safety_checker(reps: int) -> list[dict]:
    from conceptguard.concepts import PAPER_CONCEPTS
    from conceptguard.defenses.baselines.safety_checker import SafetyCheckerFilter
    from conceptguard.defenses.espresso import EspressoFilter

    embedder = vit_l14_embedder()
    images = random_images(BATCH, 512)
    prompts = [""] * BATCH
    rows = []
    for concepts in (PAPER_CONCEPTS[:1], PAPER_CONCEPTS):
        espresso = EspressoFilter(embedder, list(concepts))
        checker = SafetyCheckerFilter(embedder, {c.name: c.train_phrasings or [c.c_u] for c in concepts})
        med = interleaved_medians({"espresso": lambda: espresso.check(images, prompts),
                                   "safety_checker": lambda: checker.check(images, prompts)}, reps)
        rows.append({"concepts": len(concepts), "seconds_per_image": {k: v / BATCH for k, v in med.items()},
                     "ratio": med["espresso"] / med["safety_checker"]})
    return rows


def share_of_generation(reps: int) -> dict:
    from conceptguard.defenses.espresso import EspressoFilter
    from conceptguard.domains import get_concept
    from conceptguard.generation import generate
    from conceptguard.models import ClipEmbedder, load_clip, load_pipeline

    pipe = load_pipeline()
    prompts = ["a burning blue heart on grass"] * BATCH
    seeds = list(range(BATCH))
    images = generate(pipe, prompts, seeds)
    espresso = EspressoFilter(ClipEmbedder(*load_clip()), [get_concept("burning")])
    med = interleaved_medians({"generate": lambda: generate(pipe, prompts, seeds),
                               "espresso": lambda: espresso.check(images, prompts)}, reps)
    return {"seconds_per_image": {k: v / BATCH for k, v in med.items()}, "share": med["espresso"] / med["generate"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="timed rounds per call (median reported)")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    args = parser.parse_args()
    with torch.no_grad():
        result = {"batch": BATCH, "threads": torch.get_num_threads(), "reps": args.reps,
                  "vit_l14": espresso_vs_safety_checker(args.reps), "mini_sd": share_of_generation(args.reps)}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"CLIP ViT-L/14 (random weights), batch {BATCH}, {result['threads']} threads, median of {args.reps}:")
    for row in result["vit_l14"]:
        s = row["seconds_per_image"]
        print(f"  {row['concepts']:>2} concept(s): Espresso {s['espresso'] * 1e3:.1f} ms/image, safety checker "
              f"{s['safety_checker'] * 1e3:.1f} ms/image, ratio {row['ratio']:.3f} (target <= 1.05)")
    m = result["mini_sd"]["seconds_per_image"]
    print(f"mini SD: generation {m['generate'] * 1e3:.1f} ms/image, Espresso {m['espresso'] * 1e3:.2f} ms/image: "
          f"{result['mini_sd']['share']:.1%} of the generation time")


if __name__ == "__main__":
    main()
