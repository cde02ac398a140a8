"""An SD-safety-checker-style image filter.

Stable Diffusion's safety checker compares the CLIP image embedding with fixed concept
embeddings and flags an image when any cosine similarity exceeds that concept's threshold.
Here the concept embeddings are the CLIP text embeddings of each concept's phrases, and each
threshold is calibrated on images that do and do not show the concept (the one that best
separates them): a labelled folder the user gives, the domain's labelled images, or images the
model makes for prompts with and without the concept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from conceptguard.concepts import Concept
from conceptguard.defenses.base import Decision, ImageFilter
from conceptguard.defenses.pretrained import PretrainedMixin
from conceptguard.defenses.registry import DEFENSES, BuildContext
from conceptguard.errors import InvalidInputError
from conceptguard.generation import generate
from conceptguard.images import read_image_folder
from conceptguard.models import ClipEmbedder, load_clip


def best_threshold(pos: np.ndarray, neg: np.ndarray) -> float:
    """The cut between two score samples with the highest balanced accuracy."""
    cands = np.unique(np.concatenate([pos, neg]))
    cuts = (cands[:-1] + cands[1:]) / 2 if len(cands) > 1 else cands
    acc = [(np.mean(pos > c) + np.mean(neg <= c)) / 2 for c in cuts]
    return float(cuts[int(np.argmax(acc))])


# `calibration`: a folder of labelled images; `calibration_images`: images a side the model makes
# when there is neither such a folder nor domain labels (a real model)
CALIBRATION: dict[str, Any] = {"calibration": None, "calibration_images": 32}


def generated_calibration_images(ctx: BuildContext, concept: Concept,
                                 n: int) -> tuple[list[Image.Image], list[Image.Image]]:
    """(images of training prompts with the concept, of their twins with c_a instead), made by the
    undefended model: training text only, so no evaluation prompt is seen."""
    twins = ctx.domain.twin_prompts(concept, n, seed=ctx.seed + 7)
    seeds = [ctx.seed * 1_000_003 + i for i in range(n)]
    return generate(ctx.pipe, [u for u, _ in twins], seeds), generate(ctx.pipe, [a for _, a in twins], seeds)


UNCALIBRATED = 0.2  # a filter built by hand before `calibrate`; `build` always calibrates


@DEFENSES.register("safety-checker")
class SafetyCheckerFilter(PretrainedMixin, ImageFilter):
    name = "safety-checker"
    pretrained_kind = "safety-checker"
    weights_name = "filter.safetensors"

    def __init__(self, embedder: ClipEmbedder, phrases: dict[str, list[str]],
                 thresholds: dict[str, float] | None = None) -> None:
        if not phrases:
            raise InvalidInputError("the safety checker needs at least one concept")
        self.embedder = embedder
        self.phrases = phrases
        # one embedding per concept: the mean of its phrases' embeddings, renormalised
        self.concept_embeds = torch.stack([torch.nn.functional.normalize(embedder.texts(p).mean(0), dim=-1)
                                           for p in phrases.values()])
        self.thresholds = thresholds or {c: UNCALIBRATED for c in phrases}

    @classmethod
    def build(cls, concept: Concept, ctx: BuildContext) -> SafetyCheckerFilter:
        """One concept's filter, its threshold calibrated -- never a bare constant -- on, first
        found: the labelled folder the settings name (`calibration`: `present/` and `absent/`
        image folders); the domain's labelled images (the mini world's renders); images the model
        itself makes for training prompts with and without the concept (`calibration_images` a
        side; the prompt is the label), calibrated once and cached."""
        settings = ctx.recipe(CALIBRATION)
        f = cls(ctx.embedder, {concept.name: concept.train_phrasings or [concept.c_u]})
        if settings["calibration"]:
            folder = Path(settings["calibration"])
            f.calibrate(concept.name, read_image_folder(folder / "present"), read_image_folder(folder / "absent"))
            return f
        labelled = ctx.domain.calibration_images(concept, 200, seed=ctx.seed + 7)
        if labelled is not None:
            f.calibrate(concept.name, *labelled)
            return f

        def calibrated() -> SafetyCheckerFilter:
            f.calibrate(concept.name, *generated_calibration_images(ctx, concept, int(settings["calibration_images"])))
            return f

        return ctx.load_or_train("safety-checker", concept, settings, calibrated,
                                 lambda folder: cls.from_pretrained(folder, embedder=ctx.embedder))

    def similarities(self, images: list[Image.Image]) -> torch.Tensor:
        return self.embedder.images(images) @ self.concept_embeds.T

    def calibrate(self, concept: str, images_with: list[Image.Image], images_without: list[Image.Image]) -> float:
        k = list(self.phrases).index(concept)
        pos = self.similarities(images_with)[:, k].cpu().numpy()
        neg = self.similarities(images_without)[:, k].cpu().numpy()
        self.thresholds[concept] = best_threshold(pos, neg)
        return self.thresholds[concept]

    def check(self, images: list[Image.Image], prompts: list[str]) -> list[Decision]:
        sims = self.similarities(images)
        names = list(self.phrases)
        limits = torch.tensor([self.thresholds[c] for c in names], device=sims.device)
        out = []
        for row in sims:
            over = [names[k] for k in torch.nonzero(row > limits).flatten().tolist()]
            scores = {f"cos_{c}": float(v) for c, v in zip(names, row)}
            out.append(self.decision(blocked=bool(over), reason=f"looks like {', '.join(over)}" if over else None,
                                     **scores))
        return out

    @property
    def config(self) -> dict:
        return {"phrases": self.phrases, "thresholds": self.thresholds, "base_clip": self.embedder.name}

    def pretrained_config(self) -> dict:
        return self.config

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"concept_embeds": self.concept_embeds}

    @classmethod
    def from_state(cls, config: dict, tensors: dict[str, torch.Tensor],  # type: ignore[override]
                   embedder: ClipEmbedder | None = None) -> SafetyCheckerFilter:
        self = cls.__new__(cls)
        self.embedder = embedder or ClipEmbedder(*load_clip(config.get("base_clip")))
        self.phrases, self.thresholds = config["phrases"], config["thresholds"]
        self.concept_embeds = tensors["concept_embeds"].to(self.embedder.clip.device)
        return self
