"""What a bench config would do, without doing it (`conceptguard bench --dry-run`).

The plan counts cells and images, names the judges, the attacks and their budgets, the defenses
that train on first use, the models that are neither local folders nor in the Hugging Face cache
(they download on first use), and the prompt files that are missing. Its time estimate comes
only from measured costs: the seconds per image stored in the run's own `results.sqlite` when it
has images, else -- for the mini world, which loads in a second -- a few images generated now.
A real model's cost is not guessed: run a few prompts first.
"""

from __future__ import annotations

import time
from pathlib import Path

from conceptguard.attacks import ADVERSARIAL
from conceptguard.defenses.registry import TRAINABLE, DefenseStack
from conceptguard.eval.attack_cache import SEED_SET
from conceptguard.eval.config import BenchConfig
from conceptguard.eval.store import Store
from conceptguard.images import IMAGE_SUFFIXES
from conceptguard.prompts import read_prompt_file

MEASURE_IMAGES = 4  # images generated to measure the mini world's cost per image


def _model_status(ident: str | None, marker: str) -> str:
    """local, shipped, cached, or 'downloads on first use'."""
    from conceptguard.domains import MINIWORLD

    if ident is None or ident == MINIWORLD:
        return "shipped (mini world)"
    if Path(ident).expanduser().is_dir():
        return "local folder"
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(ident, marker), str):
            return "in the Hugging Face cache"
    except ImportError:
        pass
    return "downloads on first use"


def _prompt_count(config: BenchConfig, name: str, concept: str) -> tuple[int | None, str | None]:
    """(prompts in a user file, or None; the missing file's path, or None)."""
    path = config.prompt_file(name, concept)
    if Path(path).is_dir():
        return config.attack_prompts, None
    if not Path(path).is_file():
        return None, path
    return len(read_prompt_file(path, concept, name, config.prompt_categories(name)).items), None


def _measured_seconds(config: BenchConfig, out: Path | None) -> tuple[float | None, str]:
    """Seconds per image, and where the figure comes from."""
    db = out / "results.sqlite" if out is not None else None
    if db is not None and db.is_file():
        rows = Store(db).rows()
        if rows:
            return sum(r["seconds"] for r in rows) / len(rows), f"mean of {len(rows)} images stored in {out}"
    from conceptguard.domains import MINIWORLD

    if config.model != MINIWORLD:
        return None, "not measured: a real model's cost is known once a run has stored images (try a few prompts)"
    from conceptguard.generation import generate
    from conceptguard.models import load_pipeline

    pipe = load_pipeline(config.model)
    prompts = ["a photo of a red circle on grass"] * MEASURE_IMAGES
    generate(pipe, prompts[:1], [0], num_inference_steps=config.num_inference_steps)  # warm-up
    t0 = time.perf_counter()
    generate(pipe, prompts, list(range(MEASURE_IMAGES)), num_inference_steps=config.num_inference_steps,
             guidance_scale=config.guidance_scale)
    seconds = (time.perf_counter() - t0) / MEASURE_IMAGES
    return seconds, f"measured now: {MEASURE_IMAGES} undefended images, {config.num_inference_steps} steps"


def _fid_plan(config: BenchConfig) -> dict | None:
    """FID's reference folder and features, with what is missing."""
    if not config.fid_reference:
        return None
    folder = Path(config.fid_reference)
    images = sum(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()) if folder.is_dir() else None
    inception = config.fid_inception if config.fid_features == "inception" else None
    return {"reference": config.fid_reference, "reference_images": images, "features": config.fid_features,
            "inception": inception, "inception_found": Path(inception).is_file() if inception else None}


def plan(config: BenchConfig, out: Path | None = None, measure: bool = True) -> dict:
    """The plan of a run as a dict (what `bench --dry-run` prints)."""
    concepts = config.concepts or []
    missing: list[str] = []
    per_concept: dict[str, int] = {}  # prompts per stack, of the sets whose size is known
    for concept in concepts:
        count = (len(config.prompt_sets or []) * config.prompts_per_set
                 + (len(config.attacks) + bool(config.attacks)) * config.attack_prompts)  # with the attacks' seeds
        for name in config.prompt_files:
            n, lost = _prompt_count(config, name, concept)
            if lost:
                missing.append(lost)
            count += n or 0
        per_concept[concept] = count
    sets = [*(config.prompt_sets or []), *config.prompt_files, *([SEED_SET] if config.attacks else []),
            *(ADVERSARIAL + a for a in config.attacks)]
    images = sum(per_concept.values()) * len(config.defenses) * config.images_per_prompt
    trained = sorted({name for stack in config.defenses for name in DefenseStack.parse(stack).names
                      if name in TRAINABLE})
    result: dict = {
        "model": {"id": config.model, "status": _model_status(config.model, "model_index.json")},
        "clip": {"id": config.clip, "status": _model_status(config.clip, "config.json")} if config.clip else None,
        "device": config.device, "dtype": config.dtype or "float32",
        "stacks": config.defenses, "concepts": concepts, "prompt_sets": sets,
        "cells": len(config.defenses) * len(concepts) * len(sets),
        "images": images, "images_complete": not missing,
        "images_per_concept_and_stack": per_concept,
        "judges": config.judges, "attacks": config.attacks, "attack_budget": config.attack_budget,
        "attack_settings": config.attack_settings, "defense_settings": config.defense_settings,
        "trained_on_first_use": trained, "missing_prompt_files": sorted(set(missing)),
        "steps": config.num_inference_steps, "guidance": config.guidance_scale,
        "fid": _fid_plan(config),
    }
    if measure:
        seconds, source = _measured_seconds(config, out)
        result["seconds_per_image"] = None if seconds is None else round(seconds, 4)
        result["estimate_source"] = source
        result["estimated_minutes"] = None if seconds is None else round(images * seconds / 60, 1)
    return result


__all__ = ["plan"]
