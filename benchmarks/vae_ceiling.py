"""How much of each concept survives the VAE: the oracle on renders and on the VAE's decodings.

A generated image is a VAE decoding, so the oracle's recall on decodings of true renders is the
most any UNet could reach on the concept gates. Renders come from this checkout's renderer, so
on a branch that draws the marks differently this measures that world with the given weights.

    python benchmarks/vae_ceiling.py [--vae DIR ...] [--oracle DIR] [--n 400] [--seed 5000] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def detected(oracle, images: np.ndarray, concept: str) -> np.ndarray:
    return np.array([j["concepts"][concept] > 0.5 for j in oracle.judge(images)])


@torch.no_grad()
def decode_renders(vae, images: np.ndarray) -> np.ndarray:
    from conceptguard.miniworld.data import to_tensor, to_uint8

    return to_uint8(vae.decode(vae.encode(to_tensor(images)).latent_dist.mean).sample)


def measure(vaes: dict, n: int, seed: int, oracle_dir: Path | None = None) -> list[dict]:
    from conceptguard.miniworld.domain import concept_renders
    from conceptguard.miniworld.world import CONCEPTS
    from conceptguard.models import load_oracle

    oracle = load_oracle(oracle_dir)
    rows = []
    for k, c in enumerate(CONCEPTS):
        images, present = concept_renders(c, n, seed + k)  # half show the concept, half its twin
        row = {"concept": c.name, "renders_recall": float(detected(oracle, images, c.name)[present].mean())}
        for name, vae in vaes.items():
            decoded = decode_renders(vae, images)
            hit = detected(oracle, decoded, c.name)
            row[name] = {"recall": float(hit[present].mean()), "false_positives": float(hit[~present].mean()),
                         "l1": float(np.abs(decoded.astype(float) - images).mean())}
        rows.append(row)
    return rows


def main() -> None:
    from diffusers import AutoencoderKL

    from conceptguard.miniworld.paths import WEIGHTS_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", type=Path, nargs="*", default=[], help="more VAE folders (the shipped one is always measured)")
    parser.add_argument("--oracle", type=Path, default=None, help="judge folder (default: the shipped oracle)")
    parser.add_argument("--n", type=int, default=400, help="renders per concept")
    parser.add_argument("--seed", type=int, default=5000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folders = {"shipped": WEIGHTS_DIR / "pipeline" / "vae", **{str(p): p for p in args.vae}}
    vaes = {name: AutoencoderKL.from_pretrained(path).eval() for name, path in folders.items()}
    rows = measure(vaes, args.n, args.seed, args.oracle)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    for row in rows:
        parts = [f"{row['concept']:<10} renders {row['renders_recall']:.3f}"]
        parts += [f"{name}: recall {row[name]['recall']:.3f} fp {row[name]['false_positives']:.3f} "
                  f"L1 {row[name]['l1']:.2f}" for name in vaes]
        print(" | ".join(parts))


if __name__ == "__main__":
    main()
