"""What every attack shares: the target it attacks, the result it stores, the budget it spends.

An attack takes a concept and a target (a defense stack wrapped around the model, as a
GuardedPipeline) and returns adversarial prompts -- text, or text with learned token
embeddings (CCE) -- plus what finding them cost. Results are saved as an `adversarial-<attack>`
prompt set, so they can be re-run on any defense (docs/attacks.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Generic, TypeVar, get_args

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, save_file

from conceptguard.concepts import Concept
from conceptguard.defenses.base import EmbeddingDefense, ImageFilter, ModelEdit, PromptFilter
from conceptguard.domain import Domain
from conceptguard.errors import InvalidInputError
from conceptguard.guard import GuardedOutput, GuardedPipeline
from conceptguard.learned_tokens import LearnedTokens, override_token_embeddings
from conceptguard.models import ClipEmbedder, load_clip
from conceptguard.progress import Progress, report
from conceptguard.prompts import Part, PromptItem, PromptSet
from conceptguard.registry import Registry

ATTACKS: Registry[type["Attack"]] = Registry("attack")
ADVERSARIAL = "adversarial-"  # an attack's prompt set is named ADVERSARIAL + its name

if TYPE_CHECKING:  # the central handles, for type hints only
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer


class Budget(BaseModel):
    """An attack's budget. Subclasses give the paper's values as defaults and a `cpu()` preset."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def cpu(cls) -> "Budget":
        return cls()

    def search_size(self) -> tuple[int, str] | None:
        """How much searching this budget buys, on the axis that sets the search's size (steps,
        evaluations, queries) with that axis's unit; None for an attack that does not search.
        A budget's share of the paper's is the ratio of the two sizes."""
        return None


@dataclass
class AttackResult:
    """Adversarial prompts for one (attack, concept, target) and what finding them cost."""

    attack: str
    concept: str
    target: str
    prompts: list[str]
    seconds: float = 0.0
    queries: int = 0  # images the attack had the target generate (black-box cost)
    iterations: int = 0  # optimisation steps or search generations
    settings: dict = field(default_factory=dict)
    tokens: LearnedTokens = field(default_factory=LearnedTokens)  # learned token embeddings (CCE)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.tokens:
            save_file(self.tokens.tensors(), str(folder / "tokens.safetensors"))
        meta = {k: getattr(self, k) for k in ("attack", "concept", "target", "prompts", "seconds", "queries",
                                              "iterations", "settings")}
        tmp = folder / "result.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(folder / "result.json")  # the result exists only once it is complete

    @classmethod
    def load(cls, folder: str | Path) -> "AttackResult":
        folder = Path(folder)
        if not (folder / "result.json").is_file():
            raise InvalidInputError(f"no attack result in {folder} (missing result.json)")
        meta = json.loads((folder / "result.json").read_text())
        tokens = LearnedTokens()
        if (folder / "tokens.safetensors").is_file():
            tokens = LearnedTokens.from_tensors(load_file(str(folder / "tokens.safetensors")))
        return cls(**meta, tokens=tokens)

    def prompt_set(self) -> PromptSet:
        """The `adversarial-<attack>` prompt set: every prompt is meant to show the concept."""
        return PromptSet(ADVERSARIAL + self.attack, self.concept,
                         tuple(PromptItem(p, {self.concept: True}) for p in self.prompts), self.tokens)

    def cost(self) -> dict:
        return {"attack": self.attack, "concept": self.concept, "target": self.target,
                "seconds": round(self.seconds, 2), "queries": self.queries, "iterations": self.iterations,
                "prompts": len(self.prompts)}


B = TypeVar("B", bound="Budget")


class Attack(Generic[B]):
    """Base of every attack. `run` must be deterministic for a given seed.

    A subclass names its budget once, as the type parameter (`class PezAttack(Attack[PezBudget])`):
    `self.budget` is then typed and `budget_type` (the class the registry builds presets from) set.
    """

    name: ClassVar[str] = "attack"
    threat_model: ClassVar[str] = ""
    # False: the result depends only on the concept and the model's (undefended) text side,
    # so one run serves every target and the runner caches it per concept.
    target_dependent: ClassVar[bool] = True
    # True: the plain form reads only the (possibly edited) UNet and the text encoder, not the
    # embedding defenses or image filters, so targets that share weights share its result
    whitebox: ClassVar[bool] = False
    budget_type: ClassVar[type[Budget]] = Budget
    # True: prompt i of a result rewrites `target.seed_prompts(n, seed)[i]`, so the cumulative ASR
    # (UnlearnDiffAtk's: the seed prompt or its attack succeeded) is defined for it
    rewrites_seed_prompts: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for parent in getattr(cls, "__orig_bases__", ()):
            args = get_args(parent)
            if args and isinstance(args[0], type) and issubclass(args[0], Budget):
                cls.budget_type = args[0]

    def __init__(self, budget: B | None = None, adaptive: bool = False) -> None:
        self.budget: B = budget or self.budget_type()  # type: ignore[assignment]
        self.adaptive = adaptive

    @property
    def label(self) -> str:
        """The registry name: "+" marks the adaptive form."""
        return self.name + ("+" if self.adaptive and not self.name.endswith("+") else "")

    def cache_name(self, target: "AttackTarget") -> str:
        """Folder name of this attack's result for `target`: results that cannot differ share one.

        A target-independent attack is run once per concept (per prompt filter); a plain
        white-box attack sees only the model's weights, so it is run once per model edit; an
        adaptive form on a target with nothing to adapt to (no embedding defense, no image
        filter) is the plain form.
        """
        name = self.label
        if self.adaptive and not (target.embedding_defenses or target.image_filters):
            name = self.name
        seen = target.defenses(PromptFilter)  # filter-aware searches avoid blocked tokens
        if self.target_dependent and self.whitebox and name == self.name:
            seen = seen + target.defenses(ModelEdit)  # a plain white-box attack reads the weights only
        elif self.target_dependent or name != self.name:  # an adaptive form depends on what it adapts to
            return f"{name}-{target.concept.name}-{target.stack}"
        scope = "+".join(d.name for d in seen) or "any"
        return f"{name}-{target.concept.name}-{scope}"

    def run(self, target: "AttackTarget", n: int, seed: int = 0) -> AttackResult:
        """n adversarial prompts for target.concept, found against target."""
        t0 = time.perf_counter()
        result = self.attack(target, n, seed)
        result.seconds = time.perf_counter() - t0
        result.settings = {"budget": self.budget.model_dump(), "seed": seed, "threat_model": self.threat_model,
                           **result.settings}
        return result

    def attack(self, target: "AttackTarget", n: int, seed: int) -> AttackResult:
        raise NotImplementedError

    def result(self, target: "AttackTarget", prompts: list[str], **kwargs) -> AttackResult:
        return AttackResult(self.label, target.concept.name, target.stack, prompts, **kwargs)


class AttackTarget:
    """The defended system as an attacker sees it: the guard stack and its components.

    White-box attacks read `unet`, `text_encoder` and the embedding defenses (`condition`);
    black-box attacks only call `generate`, which counts queries.
    """

    def __init__(self, guard: GuardedPipeline, concept: Concept, domain: Domain, stack: str = "none",
                 embedder: ClipEmbedder | None = None, progress: Progress | None = None,
                 judge: Callable[[list[Image.Image]], list[bool]] | None = None,
                 sampling: tuple[int, float] = (25, 7.5)) -> None:
        """`judge`: the evaluation's verdict (concept shown) per image, for attacks that stop once it
        says they succeeded (UnlearnDiffAtk, as its paper); `sampling`: the evaluation's denoising
        steps and guidance scale, with which such an attack generates to ask it."""
        self.guard, self.concept, self.domain, self.stack = guard, concept, domain, stack
        self.pipe = guard.pipe
        self._embedder = embedder
        self.progress = progress
        self.judge, self.sampling = judge, sampling
        self.queries = 0

    # ------------------------------------------------------------------ components
    @property
    def unet(self) -> UNet2DConditionModel:
        return self.guard.unet

    @property
    def text_encoder(self) -> CLIPTextModel:
        return self.guard.text_encoder

    @property
    def tokenizer(self) -> CLIPTokenizer:
        return self.pipe.tokenizer

    @property
    def embedder(self) -> ClipEmbedder:
        """The attacker's CLIP: the domain's (the mini CLIP in the mini world, whose text tower is SD's)."""
        if self._embedder is None:
            self._embedder = ClipEmbedder(*load_clip(self.domain.clip_id))
        return self._embedder

    def defenses(self, kind: type) -> list:
        return self.guard.of_kind(kind)

    @property
    def embedding_defenses(self) -> list[EmbeddingDefense]:
        return self.defenses(EmbeddingDefense)

    @property
    def image_filters(self) -> list[ImageFilter]:
        return self.defenses(ImageFilter)

    def report(self, what: str, done: int, total: int) -> None:
        report(self.progress, f"{what} {self.concept.name} @ {self.stack}", done, total)

    # ------------------------------------------------------------------ text side
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return self.guard.tokenize(prompts)

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """The text encoder's input token embeddings [B, 77, d] for token ids."""
        return self.text_encoder.get_input_embeddings()(ids.to(self.text_encoder.device))

    def encode(self, ids: torch.Tensor, token_embeds: torch.Tensor | None = None, defended: bool = True) -> torch.Tensor:
        """Conditioning [B, 77, d] the UNet sees, differentiable in `token_embeds`.

        With `defended`, the target's embedding defenses are applied (through their
        differentiable form, so white-box attacks can be adaptive to them).
        """
        with override_token_embeddings(self.text_encoder, token_embeds):
            hidden = self.text_encoder(ids.to(self.unet.device))[0]
        if defended:
            for d in self.embedding_defenses:
                hidden = d.differentiable(hidden, ids)
        return hidden

    def uncond(self, batch: int) -> torch.Tensor:
        """The unconditional embeddings the guard would use (embedding defenses may change them)."""
        with torch.no_grad():
            u = self.guard.encode([""] * batch)
            for d in self.embedding_defenses:
                u = d.negative_embeds(u, self.guard.encode)
        return u

    def allowed(self, prompts: list[str]) -> list[bool]:
        """Whether the target's prompt filters let each prompt through (what a black-box user sees)."""
        ok = [True] * len(prompts)
        for f in self.defenses(PromptFilter):
            ok = [a and not d.blocked for a, d in zip(ok, f.check(prompts))]
        return ok

    def strip_blocked(self, prompt: str) -> str:
        """The prompt without the words the target's prompt filters block (filter-aware attacks)."""
        kept = [w for w in prompt.split() if self.allowed([w])[0]]
        while kept and not self.allowed([" ".join(kept)])[0]:  # a blocked multi-word phrase
            trials = [kept[:i] + kept[i + 1:] for i in range(len(kept))]
            kept = next((t for t in trials if self.allowed([" ".join(t)])[0]), kept[:-1])
        return " ".join(kept)

    @cached_property
    def vocabulary(self) -> torch.Tensor:
        """Candidate token ids for token-search attacks: the model's trained vocabulary (the
        domain's texts, e.g. the mini world's caption language; every token but the special ones
        for real models), without tokens the target's prompt filters block."""
        tok = self.tokenizer
        special = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
        texts = self.domain.vocabulary_texts()
        if texts is not None:
            ids = sorted({i for text in texts for i in tok(text).input_ids} - special)
        else:
            ids = [i for i in range(len(tok)) if i not in special]
        words = [str(tok.decode([i])).strip() for i in ids]
        ok = self.allowed(words)
        return torch.tensor([i for i, w, a in zip(ids, words, ok) if a and w], dtype=torch.long)

    # ------------------------------------------------------------------ prompts and images
    def seed_prompts(self, n: int, seed: int = 0, part: Part = "eval") -> list[str]:
        """n prompts that ask for the concept directly (the domain's; the `unacceptable` set's
        phrasing in the mini world): the prompts attacked (`eval`), or prompts an attack learns
        from (`train`), never one of the bench's evaluation prompts."""
        return self.domain.seed_prompts(self.concept, n, seed, part)

    def concept_images(self, n: int, seed: int = 0) -> list[Image.Image]:
        """n images that show the concept: renders in the mini world; images of the undefended
        model for c_u prompts otherwise (what UnlearnDiffAtk and CCE start from)."""
        return self.domain.concept_images(self.concept, n, seed, self.pipe)

    def paired_concept_images(self, n: int, seed: int = 0, part: Part = "eval") -> list[Image.Image]:
        """One image of the concept for each of `seed_prompts(n, seed, part)`, showing what that
        prompt describes (the paper's setting: the target image is what the original model makes of it)."""
        return self.domain.paired_concept_images(self.concept, n, seed, self.pipe, part)

    def image_latents(self, images: list[Image.Image]) -> torch.Tensor:
        """VAE latents (scaled) of images, as the UNet is trained on them."""
        vae = self.pipe.vae
        pixels = self.pipe.image_processor.preprocess(images).to(vae.device, vae.dtype)
        with torch.no_grad():
            return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor

    def generate(self, prompts: list[str], seeds: list[int], num_inference_steps: int = 25,
                 guidance_scale: float = 7.5, tokens: LearnedTokens | None = None) -> GuardedOutput:
        """Black-box query: the guard's images and records. Counts toward the attack's cost."""
        self.queries += len(prompts)
        return self.guard(prompts, seed=seeds, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                          learned_tokens=tokens)

    def succeeds(self, prompts: list[str], seeds: list[int]) -> list[bool]:
        """Whether the evaluation judge sees the concept in the target's image of each prompt (a
        blocked image fails); all False without a judge. Each prompt is a query."""
        if self.judge is None or not prompts:
            return [False] * len(prompts)
        steps, guidance = self.sampling
        out = self.generate(prompts, seeds, num_inference_steps=steps, guidance_scale=guidance)
        return [bool(v) and not r.blocked for v, r in zip(self.judge(out.images), out.records)]

    def prompt_similarity(self, images: list[Image.Image], prompts: list[str]) -> np.ndarray:
        """The attacker's CLIP cosine between each image and its prompt (SneakyPrompt's reward)."""
        e = self.embedder
        return (e.images(images) * e.texts(prompts)).sum(-1).cpu().numpy()

    def p_unacceptable(self, images: list[Image.Image]) -> np.ndarray:
        """The attacker's own CLIP estimate that each image shows c_u rather than c_a."""
        e = self.embedder
        text = e.texts([self.concept.c_u, self.concept.c_a])
        return torch.softmax(e.logit_scale * e.images(images) @ text.T, -1)[:, 0].cpu().numpy()
