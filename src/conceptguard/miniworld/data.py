"""Rendered training sets, built deterministically and cached on disk."""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from conceptguard.miniworld.render import render
from conceptguard.miniworld.scene import Scene, sample_scene
from conceptguard.progress import Progress, report

RENDERING = "rendering training set"  # the progress task's name


def cache_dir() -> Path:
    """Where training caches and checkpoints go (never committed)."""
    path = Path(os.environ.get("CONCEPTGUARD_CACHE", Path.home() / ".cache" / "conceptguard"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _render_chunk(args: tuple[int, int, int, bool]) -> tuple[np.ndarray, list[dict]]:
    seed, start, stop, allow_heldout = args
    images, scenes = [], []
    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])  # per-index rng: the same set however it is chunked
        scene = sample_scene(rng, allow_heldout=allow_heldout)
        images.append(render(scene, rng))
        scenes.append(asdict(scene))
    return np.stack(images), scenes


def render_set(n: int, seed: int, allow_heldout: bool = False, workers: int | None = None,
               progress: Progress | None = None) -> tuple[np.ndarray, list[Scene]]:
    """`n` random scenes and their renders (uint8, N x 32 x 32 x 3); the same for the same seed."""
    chunk = 500
    jobs = [(seed, s, min(n, s + chunk), allow_heldout) for s in range(0, n, chunk)]
    images, scenes = [], []
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for im, sc in pool.map(_render_chunk, jobs):
                images.append(im)
                scenes.extend(sc)
                report(progress, RENDERING, len(scenes), n)
    else:
        for job in jobs:
            im, sc = _render_chunk(job)
            images.append(im)
            scenes.extend(sc)
            report(progress, RENDERING, len(scenes), n)
    return np.concatenate(images), [Scene(**s) for s in scenes]


def cached_render_set(n: int, seed: int, progress: Progress | None = None,
                      allow_heldout: bool = False) -> tuple[np.ndarray, list[Scene]]:
    """The training set, rendered once and kept in the cache directory (`allow_heldout`: with the
    attribute combinations held out of the generator's training too)."""
    path = cache_dir() / f"renders_n{n}_s{seed}{'_all' if allow_heldout else ''}"
    if (path / "images.npy").exists() and (path / "scenes.json").exists():
        report(progress, RENDERING, n, n)
        return np.load(path / "images.npy"), [Scene(**s) for s in json.loads((path / "scenes.json").read_text())]
    images, scenes = render_set(n, seed, allow_heldout=allow_heldout, progress=progress)
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "images.npy", images)
    (path / "scenes.json").write_text(json.dumps([asdict(s) for s in scenes]))
    return images, scenes


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [-1, 1] (the VAE's and CLIP's input range)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float N x 3 x H x W in [-1, 1] -> uint8 N x H x W x 3."""
    return images.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()
