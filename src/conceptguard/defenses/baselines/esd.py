"""Erased Stable Diffusion (ESD; Gandikota et al., ICCV 2023).

Fine-tunes the UNet so that its prediction for the concept c follows negative guidance:
    eps_new(x_t, c, t) -> eps(x_t, "", t) - eta * (eps(x_t, c, t) - eps(x_t, "", t))
with eps the frozen original and x_t sampled by DDIM from c with the model being trained.
ESD-x trains the cross-attention (attn2) parameters; ESD-u every other parameter but the
timestep embedding and the output layers, as the original code's `noxattn` (which skips names
starting with `time_embed` and `out.` in the LDM UNet: diffusers' `time_embedding`,
`conv_norm_out` and `conv_out`; the ResNet blocks' timestep projections are trained).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from conceptguard.concepts import Concept
from conceptguard.defenses.baselines.weight_edit import WeightEdit
from conceptguard.defenses.registry import DEFENSES, BuildContext
from conceptguard.progress import Progress, report

# Paper hyper-parameters (SD v1.4) and a preset sized for the mini world on 2 CPU cores.
PAPER = dict(iterations=1000, lr=1e-5, ddim_steps=50, eta=1.0, start_guidance=3.0, batch=1)
MINI = dict(iterations=150, lr=3e-4, ddim_steps=25, eta=1.0, start_guidance=3.0, batch=4)
PRESETS = {"mini": MINI, "paper": PAPER}


ESD_U_FROZEN = ("time_embedding.", "conv_norm_out.", "conv_out.")  # LDM's time_embed.* and out.*
REVISION = {"x": 1, "u": 2}  # esd-u 2: the original's parameter set (the ResNets' time_emb_proj trained)


def trainable_names(unet, variant: str) -> list[str]:
    if variant == "x":
        return [n for n, _ in unet.named_parameters() if "attn2" in n]
    if variant == "u":
        return [n for n, _ in unet.named_parameters() if "attn2" not in n and not n.startswith(ESD_U_FROZEN)]
    raise ValueError(f"unknown ESD variant {variant!r}: 'x' (cross-attention) or 'u' (unconditional)")


@torch.no_grad()
def _encode(pipe, texts: list[str]) -> torch.Tensor:
    tok = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    return pipe.text_encoder(tok.to(pipe.unet.device))[0]


@torch.no_grad()
def sample_until(unet, scheduler, z: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                 guidance: float, n_steps: int) -> torch.Tensor:
    """Run the first `n_steps` DDIM steps from noise `z` (x_t for ESD's training target)."""
    for t in scheduler.timesteps[:n_steps]:
        eps_u, eps_c = unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        z = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, z).prev_sample
    return z


HALF = (torch.float16, torch.bfloat16)


def training_setup(pipe, seed: int, ddim_steps: int):
    """What ESD and All but One both start from: the frozen original UNet, a trainable copy, a DDIM
    scheduler for partial sampling, and the seeded numpy / torch generators."""
    from diffusers import DDIMScheduler

    frozen = pipe.unet.eval().requires_grad_(False)
    if frozen.dtype in HALF:
        # Adam on half-precision weights loses small updates (its eps 1e-8 is 0 in float16, and a
        # 1e-5 step vanishes next to a weight): train -- and take the targets from -- float32
        # copies, as mixed precision keeps float32 master weights; WeightEdit casts the result back.
        frozen = copy.deepcopy(frozen).float()
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(ddim_steps)
    return frozen, copy.deepcopy(frozen), scheduler, np.random.default_rng(seed), torch.Generator().manual_seed(seed)


def train_esd(pipe, concept: Concept, variant: str = "x", seed: int = 0,
              progress: Progress | None = None, preset: str = "mini", **overrides) -> WeightEdit:
    """Train ESD-x or ESD-u for one concept on its training phrasings; returns the changed weights."""
    hp = {**PRESETS[preset], **overrides}
    frozen, unet, scheduler, rng, gen = training_setup(pipe, seed, hp["ddim_steps"])
    names = trainable_names(unet, variant)
    params = dict(unet.named_parameters())
    for n in names:
        params[n].requires_grad_(True)
    opt = torch.optim.Adam([params[n] for n in names], lr=hp["lr"])
    prompts = concept.train_phrasings or [concept.c_u]
    emb_0 = _encode(pipe, [""]).to(unet.dtype)
    emb_p = {p: _encode(pipe, [p]).to(unet.dtype) for p in prompts}
    size = unet.config.sample_size
    stride = scheduler.config.num_train_timesteps // hp["ddim_steps"]
    for it in range(hp["iterations"]):
        batch_prompts = [prompts[i] for i in rng.integers(0, len(prompts), hp["batch"])]
        cond = torch.cat([emb_p[p] for p in batch_prompts])
        uncond = emb_0.repeat(len(batch_prompts), 1, 1)
        n_steps = int(rng.integers(0, hp["ddim_steps"]))
        # noise from a CPU generator (the same on every device), then onto the UNet's device and dtype
        z = torch.randn((len(batch_prompts), unet.config.in_channels, size, size), generator=gen).to(unet.device, unet.dtype)
        z = sample_until(unet, scheduler, z, cond, uncond, hp["start_guidance"], n_steps)
        t = scheduler.timesteps[n_steps] + int(rng.integers(0, stride))
        t = torch.full((len(batch_prompts),), min(int(t), scheduler.config.num_train_timesteps - 1), device=unet.device)
        with torch.no_grad():
            e_0 = frozen(z, t, encoder_hidden_states=uncond).sample
            e_p = frozen(z, t, encoder_hidden_states=cond).sample
        e_n = unet(z, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(e_n, e_0 - hp["eta"] * (e_p - e_0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        report(progress, f"train esd-{variant} {concept.name}", it + 1, hp["iterations"], f"loss {float(loss.detach()):.5f}")
    config = {"name": f"esd-{variant}", "method": "ESD", "variant": variant, "concept": concept.name,
              "phrases": prompts, "base_model": getattr(pipe, "name_or_path", None) or str(pipe.config._name_or_path),
              "seed": seed, **hp}
    return WeightEdit({n: params[n].detach().clone() for n in names}, config, component="unet")


@DEFENSES.register("esd-x", variant="x")
@DEFENSES.register("esd-u", variant="u")
def build_esd(concept: Concept, ctx: BuildContext, variant: str) -> WeightEdit:
    """ESD with the domain's preset, trained once per (model, concept, preset) and cached."""
    preset = ctx.domain.preset
    hp = ctx.recipe(PRESETS[preset])
    return ctx.load_or_train(f"esd-{variant}", concept, hp,
                             lambda: train_esd(ctx.pipe, concept, variant, seed=ctx.seed, progress=ctx.progress,
                                               preset=preset, **hp),
                             WeightEdit.from_pretrained, revision=REVISION[variant])
