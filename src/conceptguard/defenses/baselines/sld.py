"""Safe Latent Diffusion (Schramowski et al., CVPR 2023) as a guidance defense.

The update of diffusers' StableDiffusionPipelineSafe, applied to any SD pipeline: at each step
the unsafe concept's noise prediction eps_s steers guidance away where the prompt's prediction
is close to it, with warm-up and momentum. Presets are diffusers' SafetyConfig values, whose
warm-up counts steps of SLD's 50-step schedule: it is kept as that share of the trajectory, so a
run with other step counts (the bench's 25) skips the same 30/20/14% as the paper.
"""

from __future__ import annotations

import torch

from conceptguard.concepts import Concept
from conceptguard.defenses.base import GuidanceDefense
from conceptguard.defenses.registry import DEFENSES, BuildContext

# diffusers.pipelines.stable_diffusion_safe.SafetyConfig, for SLD's 50 steps
PAPER_STEPS = 50
PRESETS = {
    "weak": dict(warmup=15, scale=20.0, threshold=0.0, momentum=0.0, beta=0.0),
    "medium": dict(warmup=10, scale=1000.0, threshold=0.01, momentum=0.3, beta=0.4),
    "strong": dict(warmup=7, scale=2000.0, threshold=0.025, momentum=0.5, beta=0.7),
    "max": dict(warmup=0, scale=5000.0, threshold=1.0, momentum=0.5, beta=0.7),
}


@DEFENSES.register("sld-weak", preset="weak")
@DEFENSES.register("sld-medium", preset="medium")
@DEFENSES.register("sld-strong", preset="strong")
@DEFENSES.register("sld-max", preset="max")
class SafeLatentDiffusion(GuidanceDefense):
    def __init__(self, concept_text: str, preset: str = "medium") -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown SLD preset {preset!r}; one of {', '.join(PRESETS)}")
        self.concept_text = concept_text
        self.preset = preset
        self.name = f"sld-{preset}"
        self.__dict__.update(PRESETS[preset])
        self.warmup = int(PRESETS[preset]["warmup"])  # steps of SLD's 50-step schedule
        self._momentum: torch.Tensor | None = None
        self._warmup_steps = self.warmup

    @classmethod
    def for_concepts(cls, concepts: list[Concept], preset: str = "medium") -> "SafeLatentDiffusion":
        return cls(", ".join(dict.fromkeys(p for c in concepts for p in c.train_phrasings)), preset)

    @classmethod
    def build(cls, concept: Concept, ctx: BuildContext, preset: str) -> SafeLatentDiffusion:
        return cls.for_concepts([concept], preset)

    def extra_embeds(self, encode) -> torch.Tensor:
        return encode([self.concept_text])

    def warmup_steps(self, num_steps: int) -> int:
        """The preset's warm-up as the same share of a `num_steps` schedule (rounded)."""
        return round(self.warmup * num_steps / PAPER_STEPS)

    def reset(self, batch_size: int, num_steps: int) -> None:
        self._momentum = None
        self._warmup_steps = self.warmup_steps(num_steps)

    def guide(self, step, noise, eps_uncond, eps_cond, eps_extra, guidance_scale):
        if eps_uncond is None or eps_extra is None:
            return noise
        eps_s = eps_extra
        diff = eps_cond - eps_s
        scale = torch.clamp(diff.abs() * self.scale, max=1.0)
        scale = torch.where(diff >= self.threshold, torch.zeros_like(scale), scale)
        safety = (eps_s - eps_uncond) * scale
        if self._momentum is None:
            self._momentum = torch.zeros_like(safety)
        safety = safety + self.momentum * self._momentum
        self._momentum = self.beta * self._momentum + (1 - self.beta) * safety
        guidance = eps_cond - eps_uncond
        if step >= self._warmup_steps:
            guidance = guidance - safety
        return eps_uncond + guidance_scale * guidance
