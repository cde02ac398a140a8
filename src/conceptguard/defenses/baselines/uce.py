"""Unified Concept Editing (UCE; Gandikota et al., WACV 2024): a closed-form cross-attention edit.

For every cross-attention key and value projection W, with c_i the text embeddings of the erased
phrases, c*_i those of their replacement and c_j those of phrases to preserve:
    W' = (sum_i W c*_i c_i^T + lam * sum_j W c_j c_j^T + lam * W)
         (sum_i c_i c_i^T + lam * sum_j c_j c_j^T + lam * I)^-1
so erased phrases now produce the keys/values of the replacement, preserved ones keep theirs.
As in the reference code, the embeddings used are those from each phrase's last token onward
(the end-of-text and padding positions carry the whole phrase in a causal text encoder).
"""

from __future__ import annotations

from typing import Any

import torch

from conceptguard.concepts import Concept
from conceptguard.defenses.baselines.weight_edit import WeightEdit
from conceptguard.defenses.registry import DEFENSES, BuildContext

PAPER = dict(lam=0.5, erase_scale=1.0, preserve_scale=1.0)


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


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = min(len(a), len(b))
    return a[:n], b[:n]


def train_uce(pipe, concept: Concept, preserve: list[str] | None = None, replacement: str | None = None,
              lam: float = 0.5, erase_scale: float = 1.0, preserve_scale: float = 1.0) -> WeightEdit:
    """Edit every attn2.to_k / attn2.to_v of the UNet; `replacement` defaults to the concept's c_a."""
    erased = concept.train_phrasings or [concept.c_u]
    target = replacement if replacement is not None else concept.c_a
    old = _phrase_embeddings(pipe, erased)
    new = _phrase_embeddings(pipe, [target] * len(erased))
    kept = _phrase_embeddings(pipe, preserve) if preserve else []
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
            mat1 = mat1 + preserve_scale * (w @ c.T) @ c
            mat2 = mat2 + preserve_scale * c.T @ c
        tensors[f"{name}.weight"] = (mat1 @ torch.linalg.inv(mat2)).to(module.weight.dtype)
    config = {"name": "uce", "method": "UCE", "concept": concept.name, "erased": erased, "replacement": target,
              "preserve": preserve or [], "lam": lam, "erase_scale": erase_scale, "preserve_scale": preserve_scale,
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
