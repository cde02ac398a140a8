"""Random-weight models shaped like Stable Diffusion v1.x and CLIP ViT-L/14.

They let the real-model path run without a download: `save_sd_shaped(folder)` writes a diffusers
pipeline folder and a CLIP folder that load through the same `from_pretrained` calls as
`CompVis/stable-diffusion-v1-4` and `openai/clip-vit-large-patch14`, and that are not the mini
world, so everything built on them sees a real model (the `RealModels` domain, the paper presets).

- `size="full"`: SD v1.x's configuration exactly (UNet 320-640-1280-1280, VAE 128-256-512-512,
  a 12-layer 768-wide text encoder, 512-pixel images) and ViT-L/14's (24 layers, 1024 wide,
  224 pixels, patch 14): what `benchmarks/gpu_smoke.py` runs on a GPU.
- `size="test"`: every width where two models meet kept as SD's (4 latent channels, 768-wide
  77-token text embeddings, 768-wide CLIP projections, a 1024-wide 224-pixel patch-14 vision tower),
  SD's block types and order kept, channels and depth cut so the test suite runs on two CPU cores.

The tokenizer is the mini world's CLIP BPE tokenizer (same class, vocabulary size and 77 tokens).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from conceptguard.miniworld.paths import clip_dir, pipeline_dir
from conceptguard.models import quiet_libraries

Size = Literal["test", "full"]
CLIP_TOKENS = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                   pad_token_id=49407, hidden_act="quick_gelu")


@dataclass(frozen=True)
class Shape:
    """What `size` changes: channels and depth, never an interface width."""

    unet_channels: tuple[int, int, int, int]
    unet_layers: int
    vae_channels: tuple[int, int, int, int]
    vae_layers: int
    text_layers: int
    vision_layers: int
    sample_size: int  # latent pixels a side (images are 8x that)


SHAPES: dict[str, Shape] = {
    "full": Shape((320, 640, 1280, 1280), 2, (128, 256, 512, 512), 2, 12, 24, 64),
    "test": Shape((32, 64, 64, 64), 1, (32, 32, 64, 64), 1, 2, 1, 8),
}


# Settings for smoke runs through the bench (`defense_settings` / `attack_settings`): a few steps and
# iterations each, to check the plumbing -- shapes, devices, dtypes -- not what training achieves.
SMOKE_DEFENSE_SETTINGS: dict[str, dict] = {
    "esd-x": {"iterations": 2, "ddim_steps": 2}, "esd-u": {"iterations": 2, "ddim_steps": 2},
    "allbutone": {"iterations": 2, "ddim_steps": 2, "batch": 1},
    "sanitizer": {"pairs": 16, "benign": 16, "steps": 3, "batch": 8},
    "steerdiff": {"pairs": 16, "benign": 16, "epochs": 1},
    "espresso-ft": {"pairs": 4, "val_pairs": 2, "epochs": 1, "batch": 2},
    "safety-checker": {"calibration_images": 2},
}
_TOKEN_SEARCH = {"iterations": 2, "images": 2}
# init_pool 0: ranking the whole 49,408-token vocabulary through a 768-wide text tower takes
# minutes on a CPU (the mini-world tests cover that step)
_UNLEARNDIFF = {"iterations": 2, "candidates": 2, "draws": 1, "init_pool": 0}
_UNLEARNDIFF_PAPER = {"procedure": "simplex", "iterations": 1, "timesteps": 2}  # the paper's procedure, in brief
_CCE = {"steps": 2, "images": 2, "batch": 1}
_GENETIC = {"population": 4, "generations": 1, "pairs": 4, "elite": 1, "tournament": 2}
SMOKE_ATTACK_SETTINGS: dict[str, dict] = {
    "pez": _TOKEN_SEARCH, "pez+": _TOKEN_SEARCH, "typo+": _TOKEN_SEARCH, "cce": _CCE, "cce+": _CCE,
    "unlearndiff": _UNLEARNDIFF, "unlearndiff+": _UNLEARNDIFF_PAPER,
    "ringabell": _GENETIC, "ringabell+": _GENETIC,
    "sneaky": {"queries": 2, "candidates": 64, "pool": 4, "steps": 2},
}


def unet_config(shape: Shape) -> dict:
    """SD v1.x's UNet2DConditionModel configuration (CompVis/stable-diffusion-v1-4)."""
    return dict(sample_size=shape.sample_size, in_channels=4, out_channels=4, layers_per_block=shape.unet_layers,
                block_out_channels=shape.unet_channels,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                  "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, downsample_padding=1,
                flip_sin_to_cos=True, freq_shift=0, act_fn="silu", center_input_sample=False)


def vae_config(shape: Shape) -> dict:
    """SD v1.x's AutoencoderKL: 4 latent channels, 8x downsampling."""
    return dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=shape.sample_size * 8,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=shape.vae_channels, layers_per_block=shape.vae_layers, norm_num_groups=32,
                scaling_factor=0.18215)


def text_config(layers: int) -> dict:
    """CLIP ViT-L/14's text tower (SD v1.x's text encoder): 768 wide, 12 heads, 77 tokens."""
    return dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=layers, num_attention_heads=12,
                projection_dim=768, **CLIP_TOKENS)


def vision_config(layers: int) -> dict:
    """CLIP ViT-L/14's vision tower: 224 pixels, patch 14, 1024 wide, 16 heads."""
    return dict(image_size=224, patch_size=14, hidden_size=1024, intermediate_size=4096, num_hidden_layers=layers,
                num_attention_heads=16, projection_dim=768, hidden_act="quick_gelu")


def scheduler_config() -> dict:
    """SD v1.x's PNDM scheduler."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def save_sd_shaped(folder: str | Path, size: Size = "test", seed: int = 0) -> tuple[Path, Path]:
    """Write (pipeline folder, CLIP folder) under `folder` with random weights drawn from `seed`."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
    )

    quiet_libraries()
    shape = SHAPES[size]
    folder = Path(folder)
    pipe_dir, clip_out = folder / "pipeline", folder / "clip"
    tokenizer = CLIPTokenizer.from_pretrained(str(pipeline_dir() / "tokenizer"))
    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**vae_config(shape)), text_encoder=CLIPTextModel(CLIPTextConfig(**text_config(shape.text_layers))),
        tokenizer=tokenizer, unet=UNet2DConditionModel(**unet_config(shape)), scheduler=PNDMScheduler(**scheduler_config()),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(pipe_dir))
    clip = CLIPModel(CLIPConfig(text_config=text_config(shape.text_layers),
                                vision_config=vision_config(shape.vision_layers), projection_dim=768))
    clip.save_pretrained(str(clip_out))
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(str(clip_out))
    for name in ("vocab.json", "merges.txt"):  # the processor's tokenizer files, as the hub's CLIP folders have
        if not (clip_out / name).exists():
            shutil.copy(clip_dir() / name, clip_out / name)
    return pipe_dir, clip_out


__all__ = ["SHAPES", "SMOKE_ATTACK_SETTINGS", "SMOKE_DEFENSE_SETTINGS", "Shape", "save_sd_shaped"]
