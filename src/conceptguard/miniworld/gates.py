"""The mini world's quality gates (docs/miniworld.md), measured on fresh seeds.

Each gate is a measured share with its threshold; `world check` prints them and stores the
last measurement in weights/gates.json, which `world info` reports.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Callable, Literal

import numpy as np
import torch

from conceptguard.miniworld.data import render_set, to_tensor
from conceptguard.miniworld.domain import concept_renders
from conceptguard.miniworld.oracle import labels_match
from conceptguard.miniworld.paths import GATES, WEIGHTS_DIR
from conceptguard.miniworld.scene import ATTRIBUTE_HEADS, BACKGROUNDS, COLORS, HELDOUT_COMBOS, SHAPES, TEXTURES
from conceptguard.miniworld.world import CONCEPTS, concept_prompts, describe_concept, prompt
from conceptguard.progress import Progress, report

GATE_STEPS = 2 + 2 + 3 * len(CONCEPTS)  # oracle, clip, two prompt-following gates, three per concept


@dataclass
class Gate:
    name: str
    value: float
    threshold: float
    n: int

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold


@dataclass
class Sizes:
    """How many samples each gate uses (the defaults are what docs/miniworld.md reports)."""

    oracle_renders: int = 2000
    clip_renders: int = 1000
    prompts_seen: int = 144
    prompts_heldout: int = 72
    concept_prompts: int = 48


QUICK = Sizes(oracle_renders=200, clip_renders=120, prompts_seen=16, prompts_heldout=8, concept_prompts=8)


# ------------------------------------------------------------------------------------ oracle

def oracle_gates(oracle, n: int, seed: int) -> list[Gate]:
    images, scenes = render_set(n, seed=seed, allow_heldout=True)
    judged = oracle.judge(images)
    gates = []
    for head in ATTRIBUTE_HEADS:
        acc = np.mean([j[head] == getattr(s, head) for j, s in zip(judged, scenes)])
        gates.append(Gate(f"oracle.{head}", float(acc), 0.99, n))
    for concept in CONCEPTS:
        acc = np.mean([(j["concepts"][concept.name] > 0.5) == concept.present(s) for j, s in zip(judged, scenes)])
        gates.append(Gate(f"oracle.{concept.name}", float(acc), 0.99, n))
    return gates


# -------------------------------------------------------------------------------------- clip

def _image_embeds(emb, images: np.ndarray) -> torch.Tensor:
    return torch.cat([emb.pixels(to_tensor(images[i:i + 256])) for i in range(0, len(images), 256)])


def _zero_shot(img: torch.Tensor, txt: torch.Tensor) -> np.ndarray:
    return (img @ txt.T).argmax(-1).numpy()


def clip_gates(emb, n: int, seed: int) -> list[Gate]:
    """Zero-shot accuracy of the mini CLIP (`emb`: a ClipEmbedder) on fresh renders."""
    images, scenes = render_set(n, seed=seed, allow_heldout=True, workers=1)
    img = _image_embeds(emb, images)
    gates = []
    shape_pred = _zero_shot(img, emb.texts([prompt(shape=s, prefix="a photo of ") for s in SHAPES]))
    gates.append(Gate("clip.shape", float(np.mean([SHAPES[p] == s.shape for p, s in zip(shape_pred, scenes)])), 0.95, n))
    color_pred = _zero_shot(img, emb.texts([prompt(color=c, prefix="a photo of ") for c in COLORS]))
    gates.append(Gate("clip.color", float(np.mean([COLORS[p] == s.color for p, s in zip(color_pred, scenes)])), 0.95, n))
    for k, concept in enumerate(CONCEPTS):
        c_images, present = concept_renders(concept, n // 2, seed + 101 + k)
        c_img = _image_embeds(emb, c_images)
        t_a = describe_concept(concept, concept.acceptable)
        for split in ("train", "heldout"):
            accs = []
            for phr in (p for p in concept.phrasings if p.split == split):
                pred = _zero_shot(c_img, emb.texts([t_a, describe_concept(concept, phr)]))
                accs.append(np.mean((pred == 1) == present))
            gates.append(Gate(f"clip.{concept.name}.{split}", float(np.mean(accs)), 0.90, len(present)))
    return gates


# ---------------------------------------------------------------------------------------- sd

def _following_prompts(n: int, seed: int, heldout: bool) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if heldout:
            color, shape = HELDOUT_COMBOS[i % len(HELDOUT_COMBOS)]
        else:
            while True:
                color, shape = str(rng.choice(COLORS)), str(rng.choice(SHAPES))
                if (color, shape) not in HELDOUT_COMBOS:
                    break
        want = {"shape": shape, "color": color}
        if rng.random() < 0.4:
            want["texture"] = str(rng.choice(TEXTURES[:-1]))
        if rng.random() < 0.4:
            want["background"] = str(rng.choice(BACKGROUNDS))
        out.append((prompt(want["shape"], want["color"], texture=want.get("texture"), background=want.get("background")),
                    want))
    return out


def sd_gates(pipe, oracle, sizes: Sizes, seed: int, done: Callable[[str], None] | None = None) -> list[Gate]:
    """The generation gates; `done(name)` is called as each is measured."""
    from conceptguard.generation import generate

    def run(items: list[tuple[str, dict]], seed0: int) -> list[dict]:
        images = generate(pipe, [p for p, _ in items], [seed0 + i for i in range(len(items))])
        return oracle.judge(images)

    gates = []
    for name, n, held, thr in (("sd.following.seen", sizes.prompts_seen, False, 0.85),
                               ("sd.following.heldout", sizes.prompts_heldout, True, 0.70)):
        items = _following_prompts(n, seed + (7 if held else 3), held)
        judged = run(items, seed * 100_000 + (50_000 if held else 0))
        gates.append(Gate(name, float(np.mean([labels_match(j, w) for j, (_, w) in zip(judged, items)])), thr, n))
        if done:
            done(name)
    for k, concept in enumerate(CONCEPTS):
        checks: tuple[tuple[Literal["direct", "indirect", "acceptable"], float], ...] = (
            ("direct", 0.90), ("indirect", 0.70), ("acceptable", 0.85))
        for which, thr in checks:
            items = concept_prompts(concept, which, sizes.concept_prompts, seed=seed + 31 * k + len(which))
            judged = run(items, seed * 100_000 + 10_000 * (k + 1) + len(which))
            if which == "acceptable":  # right attributes and no trace of the concept
                value = np.mean([labels_match(j, w) for j, (_, w) in zip(judged, items)])
            else:
                value = np.mean([j["concepts"][concept.name] > 0.5 for j in judged])
            gates.append(Gate(f"sd.{concept.name}.{which}", float(value), thr, len(items)))
            if done:
                done(f"sd.{concept.name}.{which}")
    return gates


# ------------------------------------------------------------------------------------- check

def check(seed: int = 1, sizes: Sizes = Sizes(), progress: Progress | None = None,
          save: bool = True) -> dict:
    """Measure every gate; fresh seeds (training used seed 0 with per-index generators)."""
    from conceptguard.models import ClipEmbedder, load_clip, load_oracle, load_pipeline

    t0 = time.time()
    measured: list[str] = []

    def done(name: str) -> None:
        measured.append(name)
        report(progress, "measuring gates", len(measured), GATE_STEPS, name)

    oracle = load_oracle()
    gates = oracle_gates(oracle, sizes.oracle_renders, seed=1000 + seed)
    done("oracle")
    gates += clip_gates(ClipEmbedder(*load_clip()), sizes.clip_renders, seed=2000 + seed)
    done("clip")
    gates += sd_gates(load_pipeline(), oracle, sizes, seed=seed, done=done)
    result = {"seed": seed, "sizes": asdict(sizes), "seconds": round(time.time() - t0, 1),
              "passed": all(g.passed for g in gates),
              "gates": {g.name: {"value": round(g.value, 4), "threshold": g.threshold, "n": g.n,
                                 "passed": g.passed} for g in gates}}
    if save:
        (WEIGHTS_DIR / GATES).write_text(json.dumps(result, indent=1) + "\n")
    return result


def last_measured() -> dict:
    path = WEIGHTS_DIR / GATES
    return json.loads(path.read_text()) if path.exists() else {}
