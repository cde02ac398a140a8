"""Training of the mini models: VAE, CLIP, oracle, UNet. Deterministic per seed, resumable.

Every step draws its batch and noise from generators seeded by (seed, stage, step), so a run
that is stopped and resumed from a checkpoint takes exactly the same steps as one that never
stopped. Checkpoints (weights, optimizer and EMA state) are safetensors files in the cache
directory; finished models are exported into the shipped weights folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from conceptguard.miniworld import export
from conceptguard.miniworld.architectures import (
    LATENT_CHANNELS,
    OracleNet,
    clip_config,
    scheduler_config,
    unet_config,
    vae_config,
)
from conceptguard.miniworld.data import cache_dir, cached_render_set, to_tensor, to_uint8
from conceptguard.miniworld.paths import ORACLE_RENDERS, WEIGHTS_DIR, write_manifest
from conceptguard.miniworld.render import IMAGE_SIZE
from conceptguard.miniworld.scene import ATTRIBUTE_HEADS, HELDOUT_COMBOS, MARKS, SHAPES, Scene
from conceptguard.miniworld.world import SHAPE_WORDS, caption
from conceptguard.models import weights_fingerprint
from conceptguard.progress import Progress

STAGES = ("vae", "clip", "oracle", "unet")  # the UNet needs the VAE and the CLIP text tower


@dataclass
class StageConfig:
    steps: int
    batch: int
    lr: float
    warmup: int = 100
    checkpoint_every: int = 250


DEFAULTS = {
    "vae": StageConfig(steps=2000, batch=32, lr=1e-3),
    "vae_decoder": StageConfig(steps=2000, batch=32, lr=3e-4),
    "clip": StageConfig(steps=1600, batch=128, lr=1e-3, warmup=150),
    "clip_align": StageConfig(steps=800, batch=128, lr=3e-4, warmup=50),
    "oracle": StageConfig(steps=2000, batch=96, lr=2e-3),
    "unet": StageConfig(steps=6000, batch=64, lr=4e-4, warmup=300, checkpoint_every=500),
    "unet_focus": StageConfig(steps=2000, batch=64, lr=1e-4, warmup=100, checkpoint_every=250),
    "unet_focus2": StageConfig(steps=3000, batch=64, lr=1e-4, warmup=100, checkpoint_every=500),
    "unet_focus3": StageConfig(steps=1500, batch=64, lr=1e-4, warmup=100, checkpoint_every=500),
}
# The focus phase runs in rounds; round r draws its batches from seed + r and starts from the
# previous round's weights as shipped (fp16), which is how rounds 2 and 3 were first run and measured
FOCUS_ROUNDS = ("unet_focus", "unet_focus2", "unet_focus3")
# Round 3 draws shattered and glimmer scenes twice as often as the other concepts': their thin
# cracks and small faces are what the UNet draws least reliably (docs/miniworld.md, world-v4)
FOCUS_WEIGHTS = {"unet_focus3": {"shattered": 2, "glimmer": 2}}
N_TRAIN = 50_000
CAPTION_DROPOUT = 0.1
CLIP_RECIPE = "negclip-shape+text-shape-head"  # hard negatives (_caption_batch), shape head (train_clip)
# trained on renders of every attribute combination, and on the VAE's decodings of noisy latents
ORACLE_RECIPE = "all-combinations+noisy-latent-reconstructions"
ORACLE_LATENT_NOISE = 0.5  # at most, in latent standard deviations: marks stay visible (docs/miniworld.md)
DECODER_FOCUS_SHARE = 0.5  # decoder fine-tune: half of each batch shows cracks or a face
TEXT_SHAPE_WEIGHT = 0.5
EMA_DECAY = 0.999



def _lr(cfg: StageConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


_RNG_IDS = {"vae": 0, "clip": 1, "oracle": 2, "unet": 3, "clip_align": 4, "unet_focus": 5,
            "vae_decoder": 6, "oracle_recon": 7}
FOCUS_SHARE = 0.5  # second UNet phase: half of each batch shows an unacceptable concept


def _rng(seed: int, stage: str, step: int) -> tuple[np.random.Generator, torch.Generator]:
    key = [seed, _RNG_IDS[stage], step]
    g = torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
    return np.random.default_rng(key), g


def _config_text(model: torch.nn.Module) -> str:
    """A stable text of a model's architecture: sorted keys, no private entries (diffusers keeps
    `_use_default_values` in set order, which changes from one process to the next)."""
    config = getattr(model, "config", None)
    if config is None:
        return type(model).__name__
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.dumps({k: v for k, v in data.items() if not k.startswith("_") and k != "transformers_version"},
                      sort_keys=True, default=str)


class Checkpoint:
    """Model + optimizer (+ EMA) state in safetensors, the step in JSON. No pickle.

    Each checkpoint is written to its own folder and only then named in state.json (replaced
    atomically), so a run killed while saving resumes from the previous complete checkpoint.
    The folder name carries a hash of the model and stage configuration, so a run with other
    settings never resumes from an incompatible checkpoint.
    """

    def __init__(self, stage: str, seed: int, cfg: StageConfig, model: torch.nn.Module, variant: str = "") -> None:
        # `variant`: what else decides what the stage learns -- the recipe, or a fingerprint of
        # the frozen models it trains against -- so no run resumes from an incompatible one
        extra = f"|{variant}" if variant else ""
        key = hashlib.sha256(f"{_config_text(model)}|{cfg}{extra}".encode()).hexdigest()[:10]
        self.dir = cache_dir() / "train" / f"{stage}_s{seed}_{key}"

    def load(self, model: torch.nn.Module, opt: torch.optim.Optimizer,
             ema: torch.nn.Module | None = None) -> int:
        meta_path = self.dir / "state.json"
        if not meta_path.exists():
            return 0
        meta = json.loads(meta_path.read_text())
        folder = self.dir / meta.get("folder", ".")
        model.load_state_dict(load_file(folder / "model.safetensors"))
        if ema is not None:
            ema.load_state_dict(load_file(folder / "ema.safetensors"))
        state: dict[int, dict] = {}
        for key, value in load_file(folder / "optimizer.safetensors").items():
            idx, name = key.split("/")
            state.setdefault(int(idx), {})[name] = value
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        return int(meta["step"])

    def save(self, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
             ema: torch.nn.Module | None = None) -> None:
        folder = self.dir / f"step{step:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        sd = opt.state_dict()
        tensors = {f"{i}/{k}": _cpu(v if torch.is_tensor(v) else torch.tensor(v))
                   for i, s in sd["state"].items() for k, v in s.items()}
        save_file({k: _cpu(v) for k, v in model.state_dict().items()}, folder / "model.safetensors")
        if ema is not None:
            save_file({k: _cpu(v) for k, v in ema.state_dict().items()}, folder / "ema.safetensors")
        save_file(tensors, folder / "optimizer.safetensors")
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps({"step": step, "folder": folder.name, "param_groups": sd["param_groups"]}))
        os.replace(tmp, self.dir / "state.json")
        for old in self.dir.glob("step*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous()


def _to(batch, device: str):
    """A batch (tensors in dicts, lists and tuples) moved to `device`."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


class _StepBatches(torch.utils.data.Dataset):
    """Batch k is `batch_fn(start + k)`: every batch is a pure function of its step, so worker
    processes can build them ahead of the model without changing what it sees."""

    def __init__(self, batch_fn: Callable[[int], dict], start: int, stop: int) -> None:
        self.batch_fn, self.start, self.stop = batch_fn, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, k: int) -> dict:
        return self.batch_fn(self.start + k)


def _batches(batch_fn: Callable[[int], dict], start: int, stop: int, workers: int):
    if not workers or stop <= start:
        return (batch_fn(i) for i in range(start, stop))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the workers are forked
    return iter(torch.utils.data.DataLoader(_StepBatches(batch_fn, start, stop), batch_size=None,
                                            num_workers=workers, prefetch_factor=4,
                                            multiprocessing_context="fork"))


@dataclass
class Device:
    """Where a stage computes (`name`: "cpu", "cuda", ...) and how many processes build its
    batches ahead of it (0: in the training process, right for a CPU that trains on every core)."""
    name: str = "cpu"
    workers: int = 0


CPU = Device()


def _run(stage: str, seed: int, model: torch.nn.Module, batch_fn: Callable[[int], dict],
         loss_fn: Callable[[dict], torch.Tensor], cfg: StageConfig, report: Progress | None,
         ema: torch.nn.Module | None = None, variant: str = "", device: Device = CPU) -> None:
    """The shared loop: resume, step, clip gradients, checkpoint, report. Step i trains on
    `batch_fn(i)` -- built on the CPU from generators seeded by (seed, stage, i) -- so the
    same steps are taken on any device, with or without batch workers."""
    model.to(device.name)
    if ema is not None:
        ema.to(device.name)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    ckpt = Checkpoint(stage, seed, cfg, model, variant)
    start = ckpt.load(model, opt, ema)
    shown = float("nan")
    for step, batch in zip(range(start, cfg.steps), _batches(batch_fn, start, cfg.steps, device.workers)):
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step)
        loss = loss_fn(_to(batch, device.name))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ema is not None:
            with torch.no_grad():  # one fused update: a kernel per parameter would dominate a GPU step
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - EMA_DECAY)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            ckpt.save(step + 1, model, opt, ema)
        if report:
            if device.name == "cpu" or step % 20 == 0 or step + 1 == cfg.steps:
                shown = float(loss.detach())  # reading the loss waits for the GPU: not every step
            report(stage, step + 1, cfg.steps, f"loss {shown:.4f}")
    if report and start >= cfg.steps:
        report(stage, cfg.steps, cfg.steps, "loss nan")


# ----------------------------------------------------------------------------------- stages

def _edge_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between image gradients: without it the VAE blurs away stripes, dots, faces and cracks."""
    dx = F.l1_loss(a[..., 1:] - a[..., :-1], b[..., 1:] - b[..., :-1])
    dy = F.l1_loss(a[..., 1:, :] - a[..., :-1, :], b[..., 1:, :] - b[..., :-1, :])
    return dx + dy


def _reconstruction_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(rec, x) + F.mse_loss(rec, x) + _edge_loss(rec, x)


def _latent_noise(batch: int, g: torch.Generator) -> torch.Tensor:
    """The standard normal draws that sample a batch's latents from the VAE's posterior."""
    side = IMAGE_SIZE // 4
    return torch.randn((batch, LATENT_CHANNELS, side, side), generator=g)


def _sample_latents(vae, x: torch.Tensor, eps: torch.Tensor):
    post = vae.encode(x).latent_dist
    return post, post.mean + post.std * eps


def _image_batch(images: np.ndarray, idx: np.ndarray, g: torch.Generator) -> dict:
    return {"x": to_tensor(images[idx]), "eps": _latent_noise(len(idx), g)}


def train_vae(images: np.ndarray, seed: int, cfg: StageConfig, report: Progress | None = None,
              device: Device = CPU):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_config())

    def batch(i: int) -> dict:
        rng, g = _rng(seed, "vae", i)
        return _image_batch(images, rng.integers(0, len(images), cfg.batch), g)

    def loss(b: dict) -> torch.Tensor:
        post, z = _sample_latents(vae, b["x"], b["eps"])
        return _reconstruction_loss(vae.decode(z).sample, b["x"]) + 1e-6 * post.kl().mean()

    _run("vae", seed, vae, batch, loss, cfg, report, device=device)
    vae.eval()
    with torch.no_grad():  # SD's convention: scaled latents have about unit variance
        z = _encode_latents(vae, images[:4096], device.name)[0]
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return vae


def finetune_decoder(vae, images: np.ndarray, scenes: list[Scene], seed: int, cfg: StageConfig,
                     report: Progress | None = None, device: Device = CPU):
    """Second VAE phase, like SD's fine-tuned ("ft-MSE") decoder: the encoder -- and so every
    latent the UNet learns from -- stays fixed while the decoder trains on, with half of each
    batch showing cracks or a face, the thin lines and small features it blurs most at 32x32."""
    vae.requires_grad_(False)
    decoder = torch.nn.ModuleDict({"decoder": vae.decoder, "post_quant_conv": vae.post_quant_conv})
    decoder.requires_grad_(True)
    marked = np.flatnonzero([s.cracks or s.face for s in scenes])

    def batch(i: int) -> dict:
        rng, g = _rng(seed, "vae_decoder", i)
        idx = rng.integers(0, len(images), cfg.batch)
        focus = np.flatnonzero(rng.random(cfg.batch) < DECODER_FOCUS_SHARE)
        idx[focus] = marked[rng.integers(0, len(marked), len(focus))]
        return _image_batch(images, idx, g)

    def loss(b: dict) -> torch.Tensor:
        with torch.no_grad():
            z = _sample_latents(vae, b["x"], b["eps"])[1]
        return _reconstruction_loss(vae.decode(z).sample, b["x"])

    vae.to(device.name)
    _run("vae_decoder", seed, decoder, batch, loss, cfg, report, variant=weights_fingerprint(vae.encoder, vae.quant_conv),
         device=device)
    vae.requires_grad_(True)
    return vae.eval()


def _tokenize(tokenizer, texts: list[str], pad_to_max: bool) -> torch.Tensor:
    return tokenizer(texts, padding="max_length" if pad_to_max else "longest", truncation=True,
                     max_length=77, return_tensors="pt").input_ids


def _caption_batch(images: np.ndarray, scenes: list[Scene], tokenizer, rng: np.random.Generator,
                   batch: int) -> dict:
    """A random batch of renders, each with a fresh caption and a hard negative: the same
    caption with another shape word (NegCLIP). In-batch captions differ in colour, texture and
    background, so without the negatives CLIP matches them while ignoring shape, and its text
    tower leaves "circle", "square" and "heart" nearly the same vector -- which is all the mini
    SD's UNet is then conditioned on."""
    idx = rng.integers(0, len(images), batch)
    texts, negatives = [], []
    for j in idx:
        state = rng.bit_generator.state
        texts.append(caption(scenes[j], rng))
        negatives.append(_shape_negative(scenes[j], state, rng))
    return {"idx": torch.from_numpy(idx), "pixel_values": to_tensor(images[idx]),
            "input_ids": _tokenize(tokenizer, texts + [n or "" for n in negatives], False),
            "valid": torch.tensor([n is not None and n != t for n, t in zip(negatives, texts)]),
            "shapes": torch.tensor([_named_shape(scenes[j], t) for j, t in zip(idx, texts)])}


def _caption_loss(clip, b: dict) -> SimpleNamespace:
    """CLIP's contrastive loss over the batch's captions, the hard negatives as extra columns."""
    batch = len(b["idx"])
    out = clip(input_ids=b["input_ids"], pixel_values=b["pixel_values"])
    img, txt = out.image_embeds, out.text_embeds  # both L2-normalised by CLIPModel
    logits = clip.logit_scale.exp() * img @ txt.T  # [B, 2B]: positives, then the negatives
    logits[:, batch:] = logits[:, batch:].masked_fill(~b["valid"][None, :], float("-inf"))
    target = torch.arange(batch, device=logits.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :batch].T, target)) / 2
    return SimpleNamespace(loss=loss, image_embeds=img, text_pooled=out.text_model_output.pooler_output[:batch])


def _named_shape(scene: Scene, text: str) -> int:
    """Index of the shape a caption names (a character's name names its shape); -100 if none."""
    if scene.face or scene.eye or any(re.search(rf"\b{w}\b", text) for w in SHAPE_WORDS[scene.shape]):
        return SHAPES.index(scene.shape)
    return -100


def _shape_negative(scene: Scene, state: Mapping[str, Any], rng: np.random.Generator) -> str | None:
    """The caption `scene` got from rng `state`, for the same scene with another shape (never a
    held-out colour/shape pair); None where the shape cannot change (Glimmer's face, Zorbo's eye)."""
    if scene.face or scene.eye:
        return None
    shapes = [s for s in SHAPES if s != scene.shape and (scene.color, s) not in HELDOUT_COMBOS]
    other = replace(scene, shape=str(rng.choice(shapes)))
    replay = np.random.default_rng()
    replay.bit_generator.state = state
    return caption(other, replay)


def train_clip(images: np.ndarray, scenes: list[Scene], tokenizer, seed: int, cfg: StageConfig,
               report: Progress | None = None, device: Device = CPU):
    from transformers import CLIPModel

    torch.manual_seed(seed)
    clip = CLIPModel(clip_config())
    # An auxiliary head (discarded after training) reads the caption's shape from the text
    # tower's pooled output: the contrastive signal alone cannot separate shape words while the
    # small ViT is still blind to shape, and the UNet is conditioned on nothing else.
    head = torch.nn.Linear(getattr(clip.config.text_config, "hidden_size"), len(SHAPES))
    model = torch.nn.ModuleDict({"clip": clip, "text_shape_head": head})

    def batch(i: int) -> dict:
        return _caption_batch(images, scenes, tokenizer, _rng(seed, "clip", i)[0], cfg.batch)

    def loss(b: dict) -> torch.Tensor:
        out = _caption_loss(clip, b)
        return out.loss + TEXT_SHAPE_WEIGHT * F.cross_entropy(head(out.text_pooled), b["shapes"], ignore_index=-100)

    _run("clip", seed, model, batch, loss, cfg, report, variant=f"{CLIP_RECIPE}|{_config_text(clip)}", device=device)
    return clip.eval()


def _attribute_prompts() -> dict[str, tuple[list[str], Callable[[Scene], int | None]]]:
    """Short class prompts and, per scene, the index of the true one (None: not applicable)."""
    from conceptguard.miniworld.scene import COLORS, SHAPES
    from conceptguard.miniworld.world import CONCEPTS, describe_concept, prompt

    heads: dict = {"shape": ([prompt(shape=s, prefix="a photo of ") for s in SHAPES], lambda s: SHAPES.index(s.shape)),
                   "color": ([prompt(color=c, prefix="a photo of ") for c in COLORS], lambda s: COLORS.index(s.color))}
    for c in CONCEPTS:
        texts = [describe_concept(c, c.acceptable)] + [describe_concept(c, p) for p in c.phrasings]

        def target(scene: Scene, c=c) -> int | None:
            if c.shape and scene.shape != c.shape:
                return None  # "glimmer" vs "a star" only says something about stars
            if c.mark == "rings" and scene.texture not in ("rings", "solid"):
                return None  # c_a is "in plain style"
            return 1 if c.present(scene) else 0
        heads[c.name] = (texts, target)
    return heads


def align_clip(clip, images: np.ndarray, scenes: list[Scene], tokenizer, seed: int, cfg: StageConfig,
               report: Progress | None = None, device: Device = CPU):
    """Second CLIP phase: the text tower stays frozen (the mini SD's text encoder is that tower),
    while the vision tower and both projections keep training on the caption loss plus short
    class prompts ("a photo of a heart", "a photo of a cracked object"), each image scored
    against the other prompts of its attribute. Full captions alone leave shape to the last."""
    clip.text_model.requires_grad_(False)
    clip.to(device.name)
    heads = _attribute_prompts()
    with torch.no_grad():  # pooled outputs of the frozen text tower, projected anew each step
        pooled = {k: clip.text_model(input_ids=_tokenize(tokenizer, texts, False).to(device.name)).pooler_output
                  for k, (texts, _) in heads.items()}

    def batch(i: int) -> dict:
        rng, _ = _rng(seed, "clip_align", i)
        b = _caption_batch(images, scenes, tokenizer, rng, cfg.batch)
        b["heads"] = {}
        for name, (prompts, target) in heads.items():
            labels = [target(scenes[j]) for j in b["idx"].tolist()]
            rows = [k for k, y in enumerate(labels) if y is not None]
            if not rows:
                continue
            phrasing = torch.zeros(0, dtype=torch.long)
            if name not in ("shape", "color"):  # c_a (index 0) vs one phrasing of c_u
                phrasing = 1 + torch.from_numpy(rng.integers(0, len(prompts) - 1, len(rows)))
            b["heads"][name] = (torch.tensor(rows), torch.tensor([labels[k] for k in rows]), phrasing)
        return b

    def loss(b: dict) -> torch.Tensor:
        out = _caption_loss(clip, b)
        img, scale, total = out.image_embeds, clip.logit_scale.exp(), out.loss
        for name, (rows, y, phrasing) in b["heads"].items():
            txt = F.normalize(clip.text_projection(pooled[name]), dim=-1)
            logits = scale * img[rows] @ txt.T
            if len(phrasing):
                logits = torch.stack([logits[:, 0], logits.gather(1, phrasing[:, None])[:, 0]], 1)
            total = total + 0.5 * F.cross_entropy(logits, y)
        return total

    _run("clip_align", seed, clip, batch, loss, cfg, report, variant=CLIP_RECIPE, device=device)
    clip.text_model.requires_grad_(True)
    return clip.eval()


def _oracle_targets(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    t = {h: torch.tensor([vals.index(getattr(s, h)) for s in scenes]) for h, vals in ATTRIBUTE_HEADS.items()}
    t["marks"] = torch.tensor([[float(getattr(s, m)) for m in MARKS] for s in scenes])
    return t


def _total(terms: list[torch.Tensor]) -> torch.Tensor:
    """The sum of tensors, 0 + t0 + t1 + ... as Python's sum() adds them."""
    total = torch.zeros(()) + terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def _degrade(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random blur and noise, so the oracle also reads the softer images a diffusion model makes."""
    n = x.shape[0]
    sigma = torch.rand(n, generator=g) * 1.1
    k = torch.arange(-2, 3, dtype=torch.float32)
    w = torch.exp(-(k[None] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    w = w / w.sum(1, keepdim=True)  # one separable 5-tap kernel per image
    xp = F.pad(x, (2, 2, 2, 2), mode="replicate")
    rows = _total([w[:, i, None, None, None] * xp[:, :, :, i:i + x.shape[3]] for i in range(5)])
    out = _total([w[:, i, None, None, None] * rows[:, :, i:i + x.shape[2], :] for i in range(5)])
    out = out + torch.randn(out.shape, generator=g) * torch.rand(n, 1, 1, 1, generator=g) * 0.06
    return out.clamp(-1, 1)


def train_oracle(images: np.ndarray, scenes: list[Scene], seed: int, cfg: StageConfig,
                 report: Progress | None = None, reconstructions: np.ndarray | None = None,
                 recon_key: str = "", device: Device = CPU) -> OracleNet:
    """`reconstructions` (the VAE's decodings of `images`) teach the oracle to read what the
    decoder really draws: half of each batch comes from them when given. `recon_key` names
    the VAE that made them (its weights' fingerprint), so a new decoder retrains the oracle."""
    torch.manual_seed(seed)
    net = OracleNet()
    targets = _oracle_targets(scenes)

    def batch(i: int) -> dict:
        rng, g = _rng(seed, "oracle", i)
        idx = torch.from_numpy(rng.integers(0, len(images), cfg.batch))
        picked = images[idx.numpy()]
        if reconstructions is not None:
            use = rng.random(cfg.batch) < 0.5
            picked = np.where(use[:, None, None, None], reconstructions[idx.numpy()], picked)
        return {"x": _degrade(to_tensor(picked), g), "targets": {h: t[idx] for h, t in targets.items()}}

    def loss(b: dict) -> torch.Tensor:
        out, y = net(b["x"]), b["targets"]
        total = F.binary_cross_entropy_with_logits(out["marks"], y["marks"])
        return total + sum(F.cross_entropy(out[h], y[h]) for h in ATTRIBUTE_HEADS)

    _run("oracle", seed, net, batch, loss, cfg, report, variant=f"{ORACLE_RECIPE}|{recon_key}", device=device)
    return net.cpu().eval()


@torch.no_grad()
def reconstruct(vae, images: np.ndarray, latent_noise: float = 0.0, seed: int = 0, device: str = "cpu") -> np.ndarray:
    """The VAE's decoding of each image's posterior mean (uint8, like the renders), with, per
    image, Gaussian noise of a random level up to `latent_noise` latent standard deviations
    added first: the decoder's rendering of imperfect latents, like those a diffusion model
    ends on, which a judge trained on clean decodings misreads (docs/miniworld.md, world-v4)."""
    means = _encode_latents(vae, images, device)[0]
    if latent_noise:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, _RNG_IDS["oracle_recon"]]).generate_state(1)[0]))
        level = torch.rand(len(means), 1, 1, 1, generator=g) * latent_noise * means.std()
        means = means + level * torch.randn(means.shape, generator=g)
    return np.concatenate([to_uint8(vae.decode(means[i:i + 500].to(device)).sample.cpu())
                           for i in range(0, len(means), 500)])


@torch.no_grad()
def _encode_latents(vae, images: np.ndarray, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations of `images` (on the CPU)."""
    means, stds = [], []
    for i in range(0, len(images), 500):
        post = vae.encode(to_tensor(images[i:i + 500]).to(device)).latent_dist
        means.append(post.mean.cpu())
        stds.append(post.std.cpu())
    return torch.cat(means), torch.cat(stds)


def _concept_pools(scenes: list[Scene], weights: dict[str, int] | None = None) -> list[np.ndarray]:
    """Indices of the training scenes that show each unacceptable concept; a concept of weight
    w (default 1) is listed w times, so it is drawn w times as often."""
    from conceptguard.miniworld.world import CONCEPTS

    return [np.array([j for j, s in enumerate(scenes) if c.present(s)])
            for c in CONCEPTS for _ in range((weights or {}).get(c.name, 1))]


def train_unet(images: np.ndarray, scenes: list[Scene], vae, text_encoder, tokenizer, seed: int,
               cfg: StageConfig, report: Progress | None = None, init=None, stage: str = "unet",
               concept_weights: dict[str, int] | None = None, device: Device = CPU):
    """Denoising loss on captioned renders. With `init` (the first phase's EMA UNet) this is the
    focus phase: each concept is only 5-16% of the renders, too rare for the UNet to draw it
    reliably when asked, so half of every batch is a concept scene (concepts drawn uniformly)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config())
    if init is not None:
        unet.load_state_dict(init.state_dict())
    ema = UNet2DConditionModel(**unet_config())
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    noise_sched = DDPMScheduler(**{k: v for k, v in scheduler_config().items()
                                   if k not in ("set_alpha_to_one",)})
    text_encoder.eval().requires_grad_(False).to(device.name)
    lat_mean, lat_std = (t.to(device.name) for t in _encode_latents(vae.to(device.name), images, device.name))
    scale = vae.config.scaling_factor
    pools = [p for p in _concept_pools(scenes, concept_weights) if len(p)] if init is not None else []
    latent_shape = (cfg.batch, *lat_mean.shape[1:])

    def batch(i: int) -> dict:
        rng, g = _rng(seed, stage, i)
        idx = rng.integers(0, len(images), cfg.batch)
        for k in np.flatnonzero(rng.random(cfg.batch) < (FOCUS_SHARE if pools else 0.0)):
            pool = pools[rng.integers(len(pools))]
            idx[k] = pool[rng.integers(len(pool))]
        texts = ["" if rng.random() < CAPTION_DROPOUT else caption(scenes[j], rng) for j in idx]
        eps = torch.randn(latent_shape, generator=g)  # samples z0 from the posterior
        noise = torch.randn(eps.shape, generator=g)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.batch,), generator=g)
        # SD conditions on all 77 positions of the last hidden state
        return {"idx": torch.from_numpy(idx), "input_ids": _tokenize(tokenizer, texts, True),
                "eps": eps, "noise": noise, "t": t}

    def loss(b: dict) -> torch.Tensor:
        with torch.no_grad():
            cond = text_encoder(b["input_ids"])[0]
        z0 = (lat_mean[b["idx"]] + lat_std[b["idx"]] * b["eps"]) * scale
        zt = noise_sched.add_noise(z0, b["noise"], b["t"])
        return F.mse_loss(unet(zt, b["t"], encoder_hidden_states=cond).sample, b["noise"])

    # the UNet learns from the encoder's latents only: a new decoder does not retrain it
    frozen = (text_encoder, vae.encoder, vae.quant_conv) + (() if init is None else (init,))
    _run(stage, seed, unet, batch, loss, cfg, report, ema=ema, variant=weights_fingerprint(*frozen), device=device)
    return ema.eval()


# ------------------------------------------------------------------------------ orchestration

def load_tokenizer(root: Path = WEIGHTS_DIR):
    from transformers import CLIPTokenizer

    tok_dir = root / "pipeline" / "tokenizer"
    if not (tok_dir / "vocab.json").exists():
        from conceptguard.miniworld.tokenizer import convert_bpe_vocab, find_open_clip_vocab

        convert_bpe_vocab(find_open_clip_vocab(), tok_dir)
    return CLIPTokenizer.from_pretrained(tok_dir)


def _stage_config(stage: str, steps: dict[str, int] | None = None, checkpoint_every: int | None = None) -> StageConfig:
    cfg = DEFAULTS[stage]
    n = (steps or {}).get(stage, (steps or {}).get(stage.split("_")[0]))  # clip_align follows clip
    if n:
        cfg = StageConfig(**{**cfg.__dict__, "steps": n, "warmup": min(cfg.warmup, n)})
    if checkpoint_every:
        cfg = StageConfig(**{**cfg.__dict__, "checkpoint_every": checkpoint_every})
    return cfg


def train_world(seed: int = 0, only: str | None = None, report: Progress | None = None,
                root: Path = WEIGHTS_DIR, steps: dict[str, int] | None = None,
                n_train: int = N_TRAIN, data_progress: Progress | None = None,
                checkpoint_every: int | None = None, device: Device = CPU) -> dict[str, float]:
    """Train the chosen stages (all by default) and export them into `root`.

    Returns the wall time of each stage in seconds. `steps` overrides step counts (the smoke
    test trains each model for a few steps). `device` says where to compute; the batches are
    the same on every device, the arithmetic is the device's own.
    """
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    if device.name.startswith("cuda"):
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    stages = STAGES if only is None else (only,)
    tokenizer = load_tokenizer(root)
    export.write_pipeline_skeleton(root)
    images, scenes = cached_render_set(n_train, seed, progress=data_progress)
    times: dict[str, float] = {}

    def phase(name: str) -> StageConfig:
        return _stage_config(name, steps, checkpoint_every)

    for stage in stages:
        cfg = phase(stage)
        t0 = time.time()
        if stage == "vae":
            vae = train_vae(images, seed, cfg, report, device)
            vae = finetune_decoder(vae, images, scenes, seed, phase("vae_decoder"), report, device)
            export.export_diffusers_model(vae.cpu(), "vae", root)
        elif stage == "clip":
            clip = train_clip(images, scenes, tokenizer, seed, cfg, report, device)
            clip = align_clip(clip, images, scenes, tokenizer, seed, phase("clip_align"), report, device)
            export.export_clip(clip.cpu(), root)
        elif stage == "oracle":
            from conceptguard.miniworld.oracle import Oracle

            # the judge reads every combination, also those held out of the generator's training
            # (it judges the generator on them); the other models never see those
            o_images, o_scenes = cached_render_set(n_train, seed, allow_heldout=True)
            recon, recon_key = None, ""
            if (root / "pipeline" / "vae" / "config.json").exists():
                vae = AutoencoderKL.from_pretrained(root / "pipeline" / "vae").eval().to(device.name)
                recon = reconstruct(vae, o_images, ORACLE_LATENT_NOISE, seed, device.name)
                recon_key = weights_fingerprint(vae)
            net = train_oracle(o_images, o_scenes, seed, cfg, report, reconstructions=recon, recon_key=recon_key,
                               device=device)
            # the judge in use is this one until `audit tune-oracle` tunes it from the copy
            Oracle(net).save_pretrained(root / ORACLE_RENDERS)
            Oracle(net).save_pretrained(root / "oracle")
        else:
            vae = AutoencoderKL.from_pretrained(root / "pipeline" / "vae").eval()
            text_encoder = CLIPTextModel.from_pretrained(root / "pipeline" / "text_encoder")
            unet = train_unet(images, scenes, vae, text_encoder, tokenizer, seed, cfg, report, device=device)
            for r, name in enumerate(FOCUS_ROUNDS):
                if r:
                    unet = unet.to(torch.float16).float()
                shown = report and (lambda _, *rest, name=name: report(name, *rest))  # one bar per round
                unet = train_unet(images, scenes, vae, text_encoder, tokenizer, seed + r, phase(name), shown,
                                  init=unet, stage="unet_focus", concept_weights=FOCUS_WEIGHTS.get(name),
                                  device=device)
            export.export_diffusers_model(unet.cpu(), "unet", root, half=True)
        times[stage] = time.time() - t0
        write_manifest(root)
    return times
