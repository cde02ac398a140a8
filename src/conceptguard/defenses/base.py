"""The five kinds of defense, by where in generation they act (docs/architecture.md).

A defense never runs the pipeline itself: GuardedPipeline calls each kind at its point of the
generation and records what it decided, so every block can be attributed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from PIL import Image


@dataclass
class Decision:
    """What one defense did to one image (or its prompt)."""

    defense: str
    kind: str
    blocked: bool = False
    reason: str | None = None
    scores: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"defense": self.defense, "kind": self.kind, "blocked": self.blocked,
                "reason": self.reason, "scores": self.scores}


class Defense:
    """Base of every defense. `name` identifies it in records and reports."""

    kind: ClassVar[str] = "defense"
    name: str = "defense"

    def decision(self, blocked: bool = False, reason: str | None = None, **scores: float) -> Decision:
        return Decision(self.name, self.kind, blocked, reason, {k: float(v) for k, v in scores.items()})


class PromptFilter(Defense):
    """Prompt text -> allow or block, before anything is generated."""

    kind = "prompt_filter"

    def check(self, prompts: list[str]) -> list[Decision]:
        raise NotImplementedError


class EmbeddingDefense(Defense):
    """Rewrites the prompt embeddings [B, 77, d] between the text encoder and the UNet."""

    kind = "embedding"

    def check_encoder(self, text_encoder, tokenizer) -> None:
        """Raise if this defense was trained for another text encoder (GuardedPipeline calls it)."""

    def apply(self, prompt_embeds: torch.Tensor, input_ids: torch.Tensor,
              prompts: list[str]) -> tuple[torch.Tensor, list[Decision]]:
        raise NotImplementedError

    def differentiable(self, prompt_embeds: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """`apply`'s embeddings with gradients flowing through, for adaptive white-box attacks.
        Defenses that are not differentiable return what `apply` returns."""
        return self.apply(prompt_embeds, input_ids, [""] * len(prompt_embeds))[0]

    def negative_embeds(self, uncond_embeds: torch.Tensor, encode) -> torch.Tensor:
        """The embeddings used in place of the unconditional ones (unchanged by default)."""
        return uncond_embeds


class GuidanceDefense(Defense):
    """Changes each denoising step's noise prediction (e.g. safe latent diffusion)."""

    kind = "guidance"

    def extra_embeds(self, encode) -> torch.Tensor | None:
        """Text embeddings [k, 77, d] whose noise predictions `guide` needs (e.g. the unsafe concept)."""
        return None

    def reset(self, batch_size: int, num_steps: int) -> None:
        """Called before each batch is denoised with `num_steps` steps (for defenses that keep state
        across steps or schedule by the trajectory's share)."""

    def guide(self, step: int, noise: torch.Tensor, eps_uncond: torch.Tensor, eps_cond: torch.Tensor,
              eps_extra: torch.Tensor | None, guidance_scale: float) -> torch.Tensor:
        raise NotImplementedError


class ModelEdit(Defense):
    """Edited model weights (UNet or text encoder): applied once to a pipeline."""

    kind = "model_edit"

    def apply_to(self, pipe) -> None:
        """Edit `pipe` in place (GuardedPipeline hands it a copy of the components it edits)."""
        raise NotImplementedError

    @property
    def edits(self) -> tuple[str, ...]:
        """Names of the pipeline components this edit changes ("unet", "text_encoder")."""
        return ("unet",)


class ImageFilter(Defense):
    """Generated images -> per-image decision; flagged images are replaced."""

    kind = "image_filter"

    def check(self, images: list[Image.Image], prompts: list[str]) -> list[Decision]:
        raise NotImplementedError


class CertifiedImageFilter(ImageFilter):
    """An image filter whose decision is a function of an image embedding with a certified radius:
    no change of the embedding smaller than the radius flips it (Espresso). The bench reports
    these radii beside the embedding shifts attacks cause."""

    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        """The embeddings [N, d] the decision is made on."""
        raise NotImplementedError

    def certify(self, images: list[Image.Image], unacceptable: list[bool],
                concept: str | None = None) -> dict[str, np.ndarray]:
        """Per image: `radius` (certified) and `correct` (the decision matches `unacceptable`)."""
        raise NotImplementedError


KINDS_IN_ORDER = (PromptFilter, ModelEdit, EmbeddingDefense, GuidanceDefense, ImageFilter)
