"""Unified Concept Editing (UCE; Gandikota et al., WACV 2024): a closed-form cross-attention edit.

For every cross-attention key and value projection W, with c_i the text embeddings of the erased
phrases, c*_i those of their replacement and c_j those of phrases to preserve:
    W' = (sum_i W c*_i c_i^T + lam * sum_j W c_j c_j^T + lam * W)
         (sum_i c_i c_i^T + lam * sum_j c_j c_j^T + lam * I)^-1
so erased phrases now produce the keys/values of the replacement, preserved ones keep theirs.

As the paper's reference code (`train-scripts/train_erase.py`, the WACV experiments):
- an erased phrase's embeddings are those from its last token onward (the end-of-text and padding
  positions carry the whole phrase in a causal text encoder), paired with its replacement's;
- a preserved phrase keeps all 77 token embeddings, and the empty prompt is always preserved;
- the preserve scale is max(0.1, 1 / number of preserved phrases) unless one is given.
(The authors' 2024 rewrite, `uce_sd_erase.py`, keeps only the last token of every phrase and a
preserve scale of 1; the published numbers come from the version above.)
"""

from __future__ import annotations

from typing import Any

import torch

from conceptguard.concepts import Concept
from conceptguard.defenses.baselines.weight_edit import WeightEdit
from conceptguard.defenses.registry import DEFENSES, BuildContext

AUTO = -1.0  # preserve_scale: the reference's max(0.1, 1 / len(retained phrases))
PAPER = dict(lam=0.5, erase_scale=1.0, preserve_scale=AUTO)


@torch.no_grad()
def _phrase_embeddings(pipe, texts: list[str]) -> list[torch.Tensor]:
    """For each text, the encoder's outputs from its last real token to the end ([n_i, d])."""
    tok = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    hidden = pipe.text_encoder(tok.input_ids.to(pipe.unet.device))[0]
    out = []
    for h, mask in zip(hidden, tok.attention_mask):
        last = int(mask.sum()) - 2  # the last token before <|endoftext|>
        out.append(h[max(last, 1):])
    return out


@torch.no_grad()
def _full_embeddings(pipe, texts: list[str]) -> list[torch.Tensor]:
    """Every token's embedding of each text ([77, d]): how preserved phrases enter the edit."""
    tok = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    return list(pipe.text_encoder(tok.input_ids.to(pipe.unet.device))[0])


def retained_phrases(preserve: list[str] | None) -> list[str]:
    """The reference's retain set: the empty prompt, then the phrases to preserve."""
    return ["", *[p for p in preserve or [] if p]]


def preserve_weight(preserve_scale: float, retained: list[str]) -> float:
    return max(0.1, 1 / len(retained)) if preserve_scale == AUTO else preserve_scale


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = min(len(a), len(b))
    return a[:n], b[:n]


def train_uce(pipe, concept: Concept, preserve: list[str] | None = None, replacement: str | None = None,
              lam: float = 0.5, erase_scale: float = 1.0, preserve_scale: float = AUTO) -> WeightEdit:
    """Edit every attn2.to_k / attn2.to_v of the UNet; `replacement` defaults to the concept's c_a;
    the empty prompt is preserved beside `preserve`."""
    erased = concept.train_phrasings or [concept.c_u]
    target = replacement if replacement is not None else concept.c_a
    old = _phrase_embeddings(pipe, erased)
    new = _phrase_embeddings(pipe, [target] * len(erased))
    retained = retained_phrases(preserve)
    kept = _full_embeddings(pipe, retained)
    scale = preserve_weight(preserve_scale, retained)
    tensors = {}
    for name, module in pipe.unet.named_modules():
        if not name.endswith(("attn2.to_k", "attn2.to_v")):
            continue
        w = module.weight.detach().float()
        d = w.shape[1]
        mat1 = lam * w
        mat2 = lam * torch.eye(d, device=w.device, dtype=w.dtype)
        for c_old, c_new in zip(old, new):
            c_old, c_new = _pair(c_old.float(), c_new.float())
            mat1 = mat1 + erase_scale * (w @ c_new.T) @ c_old
            mat2 = mat2 + erase_scale * c_old.T @ c_old
        for c in kept:
            c = c.float()
            mat1 = mat1 + scale * (w @ c.T) @ c
            mat2 = mat2 + scale * c.T @ c
        tensors[f"{name}.weight"] = (mat1 @ torch.linalg.inv(mat2)).to(module.weight.dtype)
    config = {"name": "uce", "method": "UCE", "concept": concept.name, "erased": erased, "replacement": target,
              "preserve": retained, "lam": lam, "erase_scale": erase_scale, "preserve_scale": scale,
              "base_model": str(pipe.config._name_or_path)}
    return WeightEdit(tensors, config, component="unet")


@DEFENSES.register("uce")
def build_uce(concept: Concept, ctx: BuildContext) -> WeightEdit:
    """UCE with the domain's preserve set, computed once per (model, concept) and cached."""
    hp: dict[str, Any] = ctx.recipe(PAPER)
    return ctx.load_or_train("uce", concept, hp,
                             lambda: train_uce(ctx.pipe, concept, preserve=ctx.domain.preserve_prompts(concept, ctx.seed),
                                               **hp),
                             WeightEdit.from_pretrained)
