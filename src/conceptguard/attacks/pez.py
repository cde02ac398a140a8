"""PEZ: hard prompts made easy (Wen et al., 2023), a white-box attack on CLIP.

The paper optimises a soft prompt of `prompt_len` token embeddings. Every step the soft
embeddings are projected onto their nearest neighbours in the token-embedding table; the
forward pass uses those hard tokens, and the gradient taken at the hard tokens is applied to
the soft ones (AdamW). The loss is 1 - cosine similarity between the CLIP text embedding of
the hard prompt and the CLIP image embeddings of the target images; the best hard prompt seen
is kept and decoded to text with the tokenizer.

Here the target images are renders of the concept (`AttackTarget.concept_images`), the text
side is the attacker's CLIP (in the mini world its text tower is SD's text encoder), and the
projection searches only `target.vocabulary` -- the model's trained vocabulary without the
tokens the target's prompt filters block -- so the prompts get past a keyword blocklist.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from conceptguard.attacks.base import ATTACKS, Attack, AttackResult, AttackTarget, Budget
from conceptguard.attacks.unlearndiff import ImageFilterTerm
from conceptguard.learned_tokens import override_token_embeddings


class PezBudget(Budget):
    """The paper's settings by default (prompt length 16, 3000 AdamW steps, lr 0.1, weight decay 0.1,
    one target image per prompt); `cpu()` is a small preset for the mini world."""

    prompt_len: int = 16
    iterations: int = 3000
    lr: float = 0.1
    weight_decay: float = 0.1
    images: int = 1  # target images each prompt is fitted to
    # Search only tokens that end a word, so the decoded text tokenizes back to the tokens found
    # (the paper searches the whole vocabulary; sub-word pieces then merge into other words).
    whole_words: bool = False
    clip_weight: float = 0.01  # pez+: weight of the image-filter hinge on the prompt's CLIP text embedding

    @classmethod
    def cpu(cls) -> PezBudget:
        # Measured on the mini world against the blocklist (3 seeds x 5 concepts): more renders per
        # prompt (so the concept, not one scene's colour and shape, is what they share) and
        # whole-word tokens lift the oracle's concept rate from 0.64 (8 tokens, 150 steps, 4 images).
        return cls(prompt_len=16, iterations=300, images=16, whole_words=True)

    def search_size(self) -> tuple[int, str]:
        return self.iterations, "steps"


@dataclass
class PezOutput:
    """What one batched PEZ run found: a prompt per restart, and how well it matches its images."""

    prompts: list[str]  # decoded best hard prompts, filter-checked
    token_ids: torch.Tensor  # [n, prompt_len] best hard tokens
    initial_ids: torch.Tensor  # [n, prompt_len] the random hard tokens the search started from
    similarity: np.ndarray  # [n] mean CLIP cosine of the best hard prompt with its images
    initial_similarity: np.ndarray  # [n] the same for the initial prompt
    iterations: int


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run tiny matrix products on one thread: faster on a shared CPU (no spinning threads), and the
    nearest-token projections come out the same whatever the machine's thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def text_features(clip, ids: torch.Tensor, token_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised CLIP text embeddings of token ids [B, T], differentiable in `token_embeds` [B, T, d]."""
    tower = clip.text_model
    with override_token_embeddings(tower, token_embeds):
        pooled = tower(input_ids=ids.to(clip.device)).pooler_output
    return F.normalize(clip.text_projection(pooled).float(), dim=-1)


def decode(tokenizer, ids: list[int]) -> str:
    return " ".join(tokenizer.decode(ids, skip_special_tokens=True).split())


def filtered_prompt(target: AttackTarget, text: str) -> str:
    """The decoded prompt, with words removed if the target's prompt filters block it (BPE pieces
    that are harmless alone can join into a blocked word, e.g. "gli" + "mmer")."""
    if target.allowed([text])[0]:
        return text
    return target.strip_blocked(text)


def pez_search(target: AttackTarget, images: list[Image.Image], n: int, budget: PezBudget, seed: int = 0,
               what: str = "pez", penalty: Callable[[torch.Tensor], torch.Tensor] | None = None) -> PezOutput:
    """n hard prompts by PEZ, one optimisation of n prompts in a batch.

    Prompt i is fitted to images[i * k:(i + 1) * k] with k = len(images) // n (so the restarts
    differ in their random start and in their target images). `penalty` (PEZ+): a loss [n] on the
    prompts' CLIP text embeddings, subtracted from the similarity `clip_weight` times.
    """
    if n < 1:
        return PezOutput([], torch.zeros(0, budget.prompt_len, dtype=torch.long),
                         torch.zeros(0, budget.prompt_len, dtype=torch.long), np.zeros(0), np.zeros(0), 0)
    k = len(images) // n
    if k < 1:
        raise ValueError(f"PEZ needs at least one image per prompt ({len(images)} images for {n} prompts)")
    emb = target.embedder
    clip, tok = emb.clip, target.tokenizer
    vocab = target.vocabulary
    if budget.whole_words:
        pieces = tok.convert_ids_to_tokens(vocab.tolist())
        vocab = vocab[torch.tensor([p.endswith("</w>") for p in pieces], dtype=torch.bool)]
    if len(vocab) == 0:
        raise ValueError("the target's prompt filters leave no tokens to search")
    gen = torch.Generator().manual_seed(seed)
    with single_thread():
        img = emb.images(images[:n * k]).reshape(n, k, -1)  # [n, k, p], normalised
        table = clip.text_model.get_input_embeddings().weight.detach()
        vocab = vocab.to(table.device)
        candidates = table[vocab]  # [V, d]
        cand_unit = F.normalize(candidates, dim=-1)

        length = budget.prompt_len
        init = vocab[torch.randint(len(vocab), (n, length), generator=gen).to(table.device)]
        soft = table[init].clone().requires_grad_(True)  # the paper starts from random real tokens
        opt = torch.optim.AdamW([soft], lr=budget.lr, weight_decay=budget.weight_decay)
        bos = torch.full((n, 1), tok.bos_token_id, dtype=torch.long, device=table.device)
        eos = torch.full((n, 1), tok.eos_token_id, dtype=torch.long, device=table.device)
        # [BOS, prompt, EOS]: CLIP's text tower is causal and pools at EOS, so padding is irrelevant.
        bos_e, eos_e = table[bos], table[eos]

        def project(x: torch.Tensor) -> torch.Tensor:
            """Nearest vocabulary token (cosine) of every soft embedding -> token ids [n, L]."""
            return vocab[(F.normalize(x, dim=-1) @ cand_unit.T).argmax(-1)]

        def score(ids: torch.Tensor, embeds: torch.Tensor | None = None) -> torch.Tensor:
            """Mean cosine with the prompt's own images [n], less the weighted penalty (PEZ+)."""
            full_ids = torch.cat([bos, ids, eos], 1)
            full = None if embeds is None else torch.cat([bos_e, embeds, eos_e], 1)
            text = text_features(clip, full_ids, full)  # [n, p]
            sim = torch.einsum("np,nkp->nk", text, img.to(text.device)).mean(-1)
            return sim if penalty is None else sim - budget.clip_weight * penalty(text)

        with torch.no_grad():
            initial_sim = score(init)
        best_ids, best_sim = init.clone(), initial_sim.clone()
        for step in range(budget.iterations):
            hard_ids = project(soft.detach())
            hard = table[hard_ids].clone().requires_grad_(True)
            sim = score(hard_ids, hard)
            better = sim.detach() > best_sim
            best_ids[better], best_sim[better] = hard_ids[better], sim.detach()[better]
            # the gradient at the projected prompt updates the soft prompt (CLIP's own weights get none)
            soft.grad, = torch.autograd.grad((1 - sim).sum(), hard)
            opt.step()
            if step % 25 == 0:
                target.report(what, step, budget.iterations)
        target.report(what, budget.iterations, budget.iterations)
    prompts = [filtered_prompt(target, decode(tok, row.tolist())) for row in best_ids]
    return PezOutput(prompts, best_ids.cpu(), init.cpu(), best_sim.cpu().numpy(), initial_sim.cpu().numpy(),
                     budget.iterations)


def pez_prompts(target: AttackTarget, images: list[Image.Image], n: int, budget: PezBudget,
                seed: int = 0) -> list[str]:
    """n PEZ prompts for the images (see `pez_search`)."""
    return pez_search(target, images, n, budget, seed).prompts


@ATTACKS.register("pez", adaptive=False)
@ATTACKS.register("pez+", adaptive=True)
class PezAttack(Attack[PezBudget]):
    """PEZ against the concept: hard prompts whose CLIP text embedding matches images of it.

    Paper: one prompt per target image, 16 tokens, 3000 steps over the full vocabulary. Here:
    n restarts batched into one optimisation, each fitted to its own `images` renders of the
    concept, over the target's unblocked vocabulary.

    `pez+` (the Espresso paper's filter-aware PEZ, our definition: its released code has no
    working filter term) also pushes the prompt's CLIP text embedding -- PEZ's stand-in for the
    image it will make -- to the acceptable side of the target's image filters: the objective is
    the similarity less `clip_weight` times the filter hinge of ImageFilterTerm.
    """

    name = "pez"
    threat_model = "white box on CLIP: gradient search for a hard prompt matching images of the concept"
    target_dependent = False

    def attack(self, target: AttackTarget, n: int, seed: int) -> AttackResult:
        budget = self.budget
        images = target.concept_images(n * budget.images, seed=seed)
        term = ImageFilterTerm(target) if self.adaptive else None
        out = pez_search(target, images, n, budget, seed, what=self.label, penalty=term.on_text if term else None)
        return self.result(target, out.prompts, iterations=out.iterations, queries=0,
                           settings={"clip_similarity": [round(float(s), 4) for s in out.similarity]})
