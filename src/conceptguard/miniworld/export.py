"""Write trained mini models into the shipped layout that diffusers / transformers load.

weights/
  pipeline/   StableDiffusionPipeline folder (model_index.json, scheduler, tokenizer,
              text_encoder, vae, unet)
  clip/       CLIPModel folder; its text tower is one shard (text.safetensors) that the
              pipeline's text_encoder/model.safetensors links to, so it is stored once
  oracle/     the oracle judge
  manifest.json  SHA-256 of every file, verified at load
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from conceptguard.miniworld.architectures import scheduler_config
from conceptguard.miniworld.paths import WEIGHTS_DIR

TEXT_SHARD = "text.safetensors"
REST_SHARD = "vision.safetensors"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None], "image_encoder": [None, None],
    "requires_safety_checker": False, "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def _relink(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent))


def write_pipeline_skeleton(root: Path = WEIGHTS_DIR) -> Path:
    """model_index.json and the scheduler config; the tokenizer must already be in place."""
    from diffusers import DDIMScheduler

    pipe = root / "pipeline"
    pipe.mkdir(parents=True, exist_ok=True)
    (pipe / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    DDIMScheduler(**scheduler_config()).save_pretrained(pipe / "scheduler")
    return pipe


def export_clip(clip, root: Path = WEIGHTS_DIR) -> None:
    """Save a CLIPModel in two shards and point the pipeline's text encoder at the text shard."""
    from transformers import CLIPImageProcessor

    out = root / "clip"
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in clip.state_dict().items()}
    # The 49,408-row token table dominates: the text shard is stored in fp16.
    text = {k: v.half() for k, v in state.items() if k.startswith("text_model.")}
    rest = {k: v for k, v in state.items() if not k.startswith("text_model.")}
    save_file(text, out / TEXT_SHARD, metadata={"format": "pt"})
    save_file(rest, out / REST_SHARD, metadata={"format": "pt"})
    total = sum(v.numel() * v.element_size() for v in (*text.values(), *rest.values()))
    index = {"metadata": {"total_size": total},
             "weight_map": {**{k: TEXT_SHARD for k in text}, **{k: REST_SHARD for k in rest}}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")
    clip.config.dtype = "float32"  # load as fp32 even though the text shard is fp16
    clip.config.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                       image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                       do_convert_rgb=True).save_pretrained(out)
    tok = root / "pipeline" / "tokenizer"
    for name in TOKENIZER_FILES:
        _relink(out / name, tok / name)

    enc = root / "pipeline" / "text_encoder"
    enc.mkdir(parents=True, exist_ok=True)
    text_config = clip.config.text_config
    text_config.dtype = "float32"
    text_config.architectures = ["CLIPTextModel"]
    text_config.save_pretrained(enc)
    _relink(enc / "model.safetensors", out / TEXT_SHARD)


def export_diffusers_model(model, name: str, root: Path = WEIGHTS_DIR, half: bool = False) -> None:
    """Save a VAE or UNet into the pipeline folder (fp16 on disk when `half`)."""
    target = root / "pipeline" / name
    if half:
        model = model.to(torch.float16)
    model.save_pretrained(target, safe_serialization=True)
    if half:
        model.to(torch.float32)
