"""CCE, "Circumventing Concept Erasure Methods" (Pham et al., 2023): textual inversion against the
defended model.

One new token embedding v is learned so that the *defended* model's denoising loss on images of
the concept is minimal when a prompt names the new token:

    min_v  E_{x, prompt, t, eps} || eps_theta(x_t, c(prompt[<cce-...> -> v]), t) - eps ||^2

v starts from the embedding of the acceptable counterpart c_a (a related word). The prompts are
the concept's prompts with the concept phrase replaced by the placeholder (and anything else
the target's prompt filters block removed), so the learned token is trained in the positions
it is used in. The result is n such prompts plus the learned token (`AttackResult.tokens`); the
tokenizer and text encoder are never changed (learned_tokens.py).

The adaptive form ("cce+") trains through the target's embedding defenses and, against image
filters, adds a hinge that pushes the CLIP embedding of the predicted clean image toward c_a
until the filter would pass it (`ImageFilterTerm` in unlearndiff.py).
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import torch

from conceptguard.attacks.base import ATTACKS, AttackResult, AttackTarget, Budget
from conceptguard.attacks.unlearndiff import (
    DenoisingObjective,
    WhiteBoxAttack,
)
from conceptguard.learned_tokens import LearnedTokens


class CCEBudget(Budget):
    """The paper's Concept Inversion (SD v1.4): textual inversion for 5,000 steps at lr 5e-3 on 25
    images of the concept, batch 4 with 4 gradient-accumulation steps (16 samples a step); 1,000
    steps against SLD (`attack_settings: {cce: {steps: 1000}}`)."""

    steps: int = 5000
    lr: float = 5e-3
    batch: int = 16  # (image, prompt, t, eps) samples per step (the paper: 4 x 4 accumulated)
    images: int = 25  # (prompt, concept image) pairs to learn from
    t_min: int = 0
    t_max: int = 1000
    clip_weight: float = 0.01  # adaptive form: weight of the image-filter hinge (per image)

    @classmethod
    def cpu(cls) -> CCEBudget:
        return cls(steps=60, lr=1.5e-2, batch=4, images=8, t_min=100, t_max=900)

    def search_size(self) -> tuple[int, str]:
        return self.steps, "steps"


def placeholder_for(target: AttackTarget, key: str, seed: int) -> str:
    """A placeholder such as "<cce-3fa2c01b>", hashed from `key` (the result's cache name) and the
    seed: lower-case hex, no concept word, let through by the target's prompt filters."""
    phrases = (*target.concept.unacceptable, target.concept.name)
    words = {w for phrase in phrases for w in re.findall(r"[a-z0-9]{3,}", phrase.lower())}
    for salt in range(100):
        h = hashlib.sha256(f"{key}|{seed}|{salt}".encode()).hexdigest()[:8]
        name = f"<cce-{h}>"
        if not any(w in name for w in words) and target.allowed([name])[0]:
            return name
    raise RuntimeError("no placeholder name passes the target's prompt filters")


def with_placeholder(target: AttackTarget, prompt: str, placeholder: str) -> str:
    """The prompt with its (longest) concept phrase replaced by the placeholder, then stripped of
    whatever else the target's prompt filters block; the placeholder goes first when the prompt
    names no concept phrase."""
    c = target.concept
    phrases = sorted({*c.unacceptable, *c.indirect, c.name}, key=len, reverse=True)
    for phrase in phrases:
        pattern = re.compile(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", re.IGNORECASE)
        if pattern.search(prompt):
            prompt = pattern.sub(placeholder, prompt, count=1)
            break
    else:
        prompt = f"{placeholder} {prompt}"
    out = target.strip_blocked(prompt)
    return out if placeholder in out else f"{placeholder} {out}".strip()


def init_embedding(target: AttackTarget) -> torch.Tensor:
    """The mean input embedding of c_a's tokens (a related word, as textual inversion starts from)."""
    tok = target.tokenizer
    ids = tok(target.concept.c_a, add_special_tokens=False).input_ids or [tok.bos_token_id]
    table = target.text_encoder.get_input_embeddings()
    with torch.no_grad():
        return table(torch.tensor(ids, device=next(table.parameters()).device)).float().mean(0).cpu()


@ATTACKS.register("cce", adaptive=False)
@ATTACKS.register("cce+", adaptive=True)
class CCEAttack(WhiteBoxAttack[CCEBudget]):
    """One learned token (textual inversion) against the defended model.

    Adam on v over random (prompt, image, t, eps) batches of the training pairs; the loss before
    and after is measured on one fixed draw per pair (`settings["loss_start"]`,
    `settings["loss_final"]`).
    """

    name = "cce"
    rewrites_seed_prompts = True
    threat_model = "white box on the defended model: a learned token embedding (textual inversion)"

    def _attack(self, target: AttackTarget, n: int, seed: int, gen: torch.Generator) -> AttackResult:
        b = self.budget
        rng = np.random.default_rng(seed)
        placeholder = placeholder_for(target, self.cache_name(target), seed)
        prompts = [with_placeholder(target, p, placeholder) for p in target.seed_prompts(n, seed)]
        # training pairs: the concept's prompts (placeholder for the concept phrase) and an image of
        # the concept showing what each prompt describes; training-part prompts, never evaluated
        train = [with_placeholder(target, p, placeholder) for p in target.seed_prompts(b.images, seed + 1, "train")]
        latents = target.image_latents(target.paired_concept_images(b.images, seed + 1, "train"))
        objective = DenoisingObjective(target, latents, (b.t_min, b.t_max), b.clip_weight, self.adaptive)
        init = init_embedding(target)
        ids, where = LearnedTokens({placeholder: init}).tokenize(target.tokenizer, train)
        with torch.no_grad():
            base = target.token_embeddings(ids).float()
        spot = torch.zeros(base.shape[:2] + (1,), device=base.device)
        for row, spots in enumerate(where):
            for pos, _ in spots:
                spot[row, pos] = 1.0

        def loss_of(v: torch.Tensor, rows: torch.Tensor, draw) -> torch.Tensor:
            embeds = base[rows] * (1 - spot[rows]) + spot[rows] * v.to(base.device, base.dtype)
            return objective.loss(ids[rows].to(base.device), embeds, *draw)

        # a fixed evaluation set (every pair once), to report the loss before and after
        eval_rows = torch.arange(len(train))
        eval_draw = objective.draws(eval_rows, torch.Generator().manual_seed(seed + 1))
        with torch.no_grad():
            loss_start = float(loss_of(init, eval_rows, eval_draw).mean())

        v = init.to(base.device).clone().requires_grad_(True)
        opt = torch.optim.Adam([v], lr=b.lr)
        history = []
        for step in range(b.steps):
            rows = torch.as_tensor(rng.integers(0, len(train), b.batch))
            draw = objective.draws(rows, gen)
            loss = loss_of(v, rows, draw).mean()
            v.grad = torch.autograd.grad(loss, v)[0]
            opt.step()
            history.append(float(loss.detach()))
            target.report(self.label, step + 1, b.steps)
        with torch.no_grad():
            loss_end = float(loss_of(v, eval_rows, eval_draw).mean())

        settings = {"loss_start": loss_start, "loss_final": loss_end, "losses": history, "adaptive": self.adaptive,
                    "placeholder": placeholder, "init": target.concept.c_a}
        return self.result(target, prompts, iterations=b.steps, settings=settings,
                           tokens=LearnedTokens({placeholder: v.detach()}))
