"""Runner throughput vs a naive loop, measured side by side in one run.

The naive loop is what per-paper evaluation scripts do: call the diffusers pipeline once per
prompt, then judge the image. The runner batches generation and judging and caches text
embeddings. Both make and judge the same images (same prompts, 25 DDIM steps, guidance 7.5).

    python benchmarks/runner_throughput.py [--n 48]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def naive(prompts: list[str], seeds: list[int]) -> float:
    from conceptguard.domains import get_concept
    from conceptguard.eval.judges import OracleJudge
    from conceptguard.generation import initial_latents
    from conceptguard.models import load_pipeline

    pipe, judge, burning = load_pipeline(), OracleJudge(), get_concept("burning")
    t0 = time.perf_counter()
    for prompt, seed in zip(prompts, seeds):
        image = pipe(prompt, num_inference_steps=25, guidance_scale=7.5,
                     latents=initial_latents(pipe, [seed], 32, 32)).images[0]
        judge.judge([image], burning)
    return time.perf_counter() - t0


def runner(n: int) -> tuple[float, list[str], list[int]]:
    from conceptguard.eval.runner import BenchConfig, Runner

    config = BenchConfig(defenses=["none"], concepts=["burning"], prompt_sets=["unacceptable"],
                         prompts_per_set=n, judges=["oracle"])
    with tempfile.TemporaryDirectory() as out:
        r = Runner(config, Path(out))
        _ = (r.pipe, r.judges)  # load the models outside the timed part, as the naive loop does
        t0 = time.perf_counter()
        r.run()
        seconds = time.perf_counter() - t0
        rows = r.store.rows()
    return seconds, [row["prompt"] for row in rows], [row["seed"] for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="images per method")
    args = parser.parse_args()
    batched, prompts, seeds = runner(args.n)
    loop = naive(prompts, seeds)
    result = {"images": args.n, "threads": torch.get_num_threads(),
              "runner_images_per_s": round(args.n / batched, 2), "naive_images_per_s": round(args.n / loop, 2),
              "speedup": round(loop / batched, 2)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
