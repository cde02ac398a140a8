"""Plain text-to-image generation with checked prompts and seeded, batch-independent noise."""

from __future__ import annotations

import warnings
from typing import Iterable

import torch
from PIL import Image

from conceptguard.errors import InvalidInputError

MAX_TOKENS = 77
# Seeds of images a defense generates to train on start here; the bench's evaluation seeds
# (config seed * 1_000_003 + index) stay far below, so no training image shares an evaluation noise.
TRAINING_SEEDS = 1 << 40


def check_prompt(prompt: str, tokenizer) -> str:
    """Reject an empty prompt; warn (and let the tokenizer truncate) past 77 tokens, as diffusers does."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInputError("empty prompt")
    n = len(tokenizer(prompt, truncation=False).input_ids)
    if n > MAX_TOKENS:
        warnings.warn(f"prompt has {n} tokens; only the first {MAX_TOKENS} (with start/end tokens) "
                      "are used", stacklevel=2)
    return prompt


def initial_latents(pipe, seeds: Iterable[int], height: int, width: int) -> torch.Tensor:
    """Initial noise drawn per image from its own seed, so an image does not depend on its batch."""
    shape = (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds]).to(pipe.device, pipe.unet.dtype)


def generate(pipe, prompts: list[str], seeds: list[int], num_inference_steps: int = 25, guidance_scale: float = 7.5,
             height: int | None = None, width: int | None = None, batch_size: int = 32,
             negative_prompt: str | None = None) -> list[Image.Image]:
    """One image per (prompt, seed) pair, in order. Defaults are the gates' settings."""
    if len(prompts) != len(seeds):
        raise InvalidInputError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    for p in set(prompts):
        check_prompt(p, pipe.tokenizer)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = height or size, width or size
    images: list[Image.Image] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        out = pipe(chunk, height=height, width=width, num_inference_steps=num_inference_steps,
                   guidance_scale=guidance_scale, latents=initial_latents(pipe, seeds[i:i + batch_size], height, width),
                   negative_prompt=[negative_prompt] * len(chunk) if negative_prompt else None)
        images.extend(out.images)
    return images
