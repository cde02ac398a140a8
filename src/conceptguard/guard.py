"""GuardedPipeline: any stack of defenses around any Stable-Diffusion-style diffusers pipeline.

Order of work for a batch of prompts:
  prompt filters -> encode prompts (cached) -> embedding defenses -> denoising with the
  (possibly edited) UNet and guidance defenses -> decode -> image filters.
The denoising loop is the one of diffusers' StableDiffusionPipeline, run on the pipeline's own
components with `prompt_embeds`, so that embedding and guidance defenses need no fork of the
pipeline. With no defenses it makes the same images as `pipe(...)` for the same initial latents.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch
from PIL import Image

from conceptguard.defenses.base import Decision, Defense, EmbeddingDefense, GuidanceDefense, ImageFilter, ModelEdit, PromptFilter
from conceptguard.errors import ConfigError, InvalidInputError
from conceptguard.generation import check_prompt, initial_latents
from conceptguard.learned_tokens import LearnedTokens, override_token_embeddings

if TYPE_CHECKING:  # the central handles, for type hints only
    from diffusers import DiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel


@dataclass
class ImageRecord:
    """Everything the guard stack decided about one image."""

    prompt: str
    seed: int
    blocked: bool = False
    blocked_by: str | None = None
    reason: str | None = None
    decisions: list[Decision] = field(default_factory=list)

    def add(self, decision: Decision) -> None:
        self.decisions.append(decision)
        if decision.blocked and not self.blocked:
            self.blocked, self.blocked_by, self.reason = True, decision.defense, decision.reason

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "seed": self.seed, "blocked": self.blocked,
                "blocked_by": self.blocked_by, "reason": self.reason,
                "decisions": [d.as_dict() for d in self.decisions]}


@dataclass
class GuardedOutput:
    images: list[Image.Image]
    records: list[ImageRecord]
    seconds: float = 0.0
    # what the model drew before image filters replaced anything (None where a prompt filter
    # stopped generation): for certificates and audits, never for the user
    unfiltered: list[Image.Image | None] = field(default_factory=list)


def _replacement(size: tuple[int, int]) -> Image.Image:
    return Image.new("RGB", size, (0, 0, 0))


class GuardedPipeline:
    """Compose defenses of any kind around a diffusers text-to-image pipeline.

    Model edits are applied to private copies of the components they change, so the
    pipeline passed in is never modified.
    """

    def __init__(self, pipe: DiffusionPipeline, defenses: Sequence[Defense] = (), embed_cache_size: int = 4096) -> None:
        for attr in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            if not hasattr(pipe, attr):
                raise ConfigError(f"{type(pipe).__name__} is not a Stable-Diffusion-style pipeline (no {attr})")
        unknown = [d for d in defenses if not isinstance(d, (PromptFilter, EmbeddingDefense, GuidanceDefense,
                                                             ModelEdit, ImageFilter))]
        if unknown:
            raise ConfigError(f"not a defense: {type(unknown[0]).__name__}")
        self.pipe = pipe
        self.defenses = list(defenses)
        self.components = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
        for edit in self.of_kind(ModelEdit):
            for name in edit.edits:
                if self.components[name] is getattr(pipe, name):
                    self.components[name] = copy.deepcopy(getattr(pipe, name))
            edit.apply_to(self.components)
        for defense in self.of_kind(EmbeddingDefense):
            defense.check_encoder(self.components["text_encoder"], pipe.tokenizer)
        self._cache: OrderedDict[tuple[int, str], torch.Tensor] = OrderedDict()
        self._cache_size = embed_cache_size

    # ------------------------------------------------------------------------------ helpers
    def of_kind(self, kind: type) -> list:
        return [d for d in self.defenses if isinstance(d, kind)]

    @property
    def unet(self) -> UNet2DConditionModel:
        return self.components["unet"]

    @property
    def text_encoder(self) -> CLIPTextModel:
        return self.components["text_encoder"]

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def tokenize(self, prompts: list[str], learned_tokens: LearnedTokens | None = None) -> torch.Tensor:
        """Token ids [B, 77]; placeholders of `learned_tokens` (e.g. a CCE attack's) as one marker token each."""
        tok = self.pipe.tokenizer
        if learned_tokens and any(learned_tokens.uses(p) for p in prompts):
            return learned_tokens.tokenize(tok, prompts)[0]
        return tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids

    @torch.no_grad()
    def encode(self, prompts: list[str], learned_tokens: LearnedTokens | None = None) -> torch.Tensor:
        """Text encoder's last hidden state for each prompt, [B, 77, d] (cached per prompt and
        learned-token vector)."""
        learned = learned_tokens or LearnedTokens()
        keys = [(id(self.text_encoder), learned.key(p)) for p in prompts]
        missing = list(dict.fromkeys(p for p, k in zip(prompts, keys) if k not in self._cache))
        if missing:
            token_embeds = None
            if any(learned.uses(p) for p in missing):
                ids, where = learned.tokenize(self.pipe.tokenizer, missing)
                token_embeds = learned.token_embeds(self.text_encoder, ids, where)
            else:
                ids = self.tokenize(missing)
            ids = ids.to(self.device)
            mask = None
            if getattr(self.text_encoder.config, "use_attention_mask", False):
                mask = (ids != self.pipe.tokenizer.pad_token_id).long()
            with override_token_embeddings(self.text_encoder, token_embeds):
                embeds = self.text_encoder(ids, attention_mask=mask)[0].to(self.unet.dtype)
            for p, e in zip(missing, embeds):
                self._cache[(id(self.text_encoder), learned.key(p))] = e
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        for k in keys:
            self._cache.move_to_end(k)
        return torch.stack([self._cache[k] for k in keys])

    def _step_kwargs(self, scheduler) -> dict:
        params = set(inspect.signature(scheduler.step).parameters)
        return {"eta": 0.0} if "eta" in params else {}

    # -------------------------------------------------------------------------------- call
    def __call__(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                 num_inference_steps: int = 25, guidance_scale: float = 7.5, seed: int | list[int] = 0,
                 height: int | None = None, width: int | None = None, num_images_per_prompt: int = 1,
                 batch_size: int = 32, learned_tokens: LearnedTokens | None = None) -> GuardedOutput:
        """Images and records for every (prompt, image) pair; image k of prompt i uses its own seed.

        `seed` is either the first seed (image j of the flattened batch uses seed + j) or one
        seed per output image. `learned_tokens` gives the vectors of placeholders the prompts
        use (a CCE attack's learned token).
        """
        t0 = time.perf_counter()
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise InvalidInputError("no prompts given")
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [int(seed) + j for j in range(len(prompts))]
        if len(seeds) != len(prompts):
            raise InvalidInputError(f"{len(seeds)} seeds for {len(prompts)} images")
        negatives = self._negatives(negative_prompt, len(prompts))
        for p in set(prompts):
            check_prompt(p, self.pipe.tokenizer)
        size = self.unet.config.sample_size * self.pipe.vae_scale_factor
        height, width = height or size, width or size

        records = [ImageRecord(p, s) for p, s in zip(prompts, seeds)]
        for f in self.of_kind(PromptFilter):
            for rec, decision in zip(records, self._run_filter(f, lambda: f.check(prompts), len(prompts))):
                rec.add(decision)
        images: list[Image.Image | None] = [None] * len(prompts)
        todo = [i for i, r in enumerate(records) if not r.blocked]
        for start in range(0, len(todo), batch_size):
            idx = todo[start:start + batch_size]
            made = self._generate([prompts[i] for i in idx], [negatives[i] for i in idx], [seeds[i] for i in idx],
                                  [records[i] for i in idx], num_inference_steps, guidance_scale, height, width,
                                  learned_tokens or LearnedTokens())
            for i, im in zip(idx, made):
                images[i] = im
        self._filter_images(images, records, prompts)
        final = [im if (im is not None and not rec.blocked) else _replacement((width, height))
                 for im, rec in zip(images, records)]
        for i, (rec, drawn) in enumerate(zip(records, images)):
            if rec.blocked and drawn is not None:
                final[i] = self._replace(rec, drawn)
        return GuardedOutput(final, records, time.perf_counter() - t0, images)

    def _negatives(self, negative_prompt, n: int) -> list[str]:
        if negative_prompt is None:
            return [""] * n
        if isinstance(negative_prompt, str):
            return [negative_prompt] * n
        if len(negative_prompt) != n:
            raise InvalidInputError(f"{len(negative_prompt)} negative prompts for {n} images")
        return list(negative_prompt)

    @staticmethod
    def _run_filter(f: Defense, call, n: int) -> list[Decision]:
        """Run a filter; if it raises, block everything it was asked about (fail closed)."""
        try:
            decisions = call()
            if len(decisions) != n:
                raise RuntimeError(f"returned {len(decisions)} decisions for {n} inputs")
            return decisions
        except Exception as exc:  # noqa: BLE001 - any failure of a filter must block, not pass
            reason = f"filter error: {type(exc).__name__}: {exc}"
            return [f.decision(blocked=True, reason=reason) for _ in range(n)]

    def _filter_images(self, images: list, records: list[ImageRecord], prompts: list[str]) -> None:
        idx = [i for i, im in enumerate(images) if im is not None]
        if not idx:
            return
        for f in self.of_kind(ImageFilter):
            batch = [images[i] for i in idx]
            decisions = self._run_filter(f, lambda: f.check(batch, [prompts[i] for i in idx]), len(idx))
            for i, decision in zip(idx, decisions):
                records[i].add(decision)

    def _replace(self, record: ImageRecord, image: Image.Image) -> Image.Image:
        for f in self.of_kind(ImageFilter):
            if f.name == record.blocked_by and hasattr(f, "replace"):
                return f.replace(image)
        return _replacement(image.size)

    @torch.no_grad()
    def _generate(self, prompts: list[str], negatives: list[str], seeds: list[int], records: list[ImageRecord],
                  steps: int, guidance: float, height: int, width: int,
                  learned_tokens: LearnedTokens) -> list[Image.Image]:
        pipe = self.pipe

        def encode(texts: list[str]) -> torch.Tensor:
            return self.encode(texts, learned_tokens)

        cond = encode(prompts)
        uncond = encode(negatives)
        ids = self.tokenize(prompts, learned_tokens)
        for d in self.of_kind(EmbeddingDefense):
            cond, decisions = d.apply(cond, ids, prompts)
            uncond = d.negative_embeds(uncond, encode)
            for rec, decision in zip(records, decisions):
                rec.add(decision)
        guiders = self.of_kind(GuidanceDefense)
        extras = [g.extra_embeds(encode) for g in guiders]
        for g in guiders:
            g.reset(len(prompts), steps)

        scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
        scheduler.set_timesteps(steps, device=self.device)
        latents = initial_latents(pipe, seeds, height, width) * scheduler.init_noise_sigma
        step_kwargs = self._step_kwargs(scheduler)
        use_cfg = guidance > 1.0 or bool(guiders)
        b = len(prompts)
        for i, t in enumerate(scheduler.timesteps):
            parts, embeds = [latents], [cond]
            if use_cfg:
                parts.insert(0, latents)
                embeds.insert(0, uncond)
            for e in extras:
                if e is not None:  # each extra conditioning is predicted for every image
                    parts.append(latents.repeat(e.shape[0], 1, 1, 1))
                    embeds.append(e.repeat_interleave(b, 0))
            model_in = scheduler.scale_model_input(torch.cat(parts), t)
            eps = self.unet(model_in, t, encoder_hidden_states=torch.cat(embeds), return_dict=False)[0]
            if use_cfg:
                eps_u, eps_c, rest = eps[:b], eps[b:2 * b], eps[2 * b:]
                noise = eps_u + guidance * (eps_c - eps_u)
            else:
                eps_u, eps_c, rest = None, eps[:b], eps[b:]
                noise = eps_c
            offset = 0
            for g, e in zip(guiders, extras):
                k = 0 if e is None else e.shape[0] * b
                eps_extra = rest[offset:offset + k] if k else None
                offset += k
                noise = g.guide(i, noise, eps_u, eps_c, eps_extra, guidance)
            latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        return pipe.image_processor.postprocess(decoded, output_type="pil")
