"""Embedding Sanitizer (ES): score every prompt token for harmfulness and rewrite the prompt
embedding after the text encoder (docs/sanitizer.md).

    H' = H + g * (H_hat - H),    g_i = clamp(alpha * max_{j <= i} s_j, 0, 1)

s_j is token j's own harmfulness score (what `explain` shows). CLIP's text encoder is causal,
so a harmful token also colours every later position (EOS and padding included, and SD
cross-attends to all 77): the gate at position i is the highest score at or before i.
alpha = 0 leaves H exactly as it was. Training is text only: prompts with the concept, their
anchor twins that say the acceptable counterpart instead, and benign prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from conceptguard.concepts import Concept
from conceptguard.defenses.base import Decision, EmbeddingDefense
from conceptguard.defenses.pretrained import PretrainedMixin
from conceptguard.defenses.registry import DEFENSES, BuildContext
from conceptguard.defenses.text_data import (
    aligned_twins,
    check_encoder,
    encode,
    encoder_identity,
    gather_positions,
    token_mask,
    words_of_pieces,
)
from conceptguard.domain import Domain
from conceptguard.progress import Progress, report


class EmbeddingSanitizer(nn.Module):
    """Scorer (per-token MLP -> s in [0, 1]) and sanitizer (one transformer layer over the sequence,
    residual, starting as the identity)."""

    def __init__(self, hidden_size: int, scorer_width: int = 256, heads: int = 4) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.scorer = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, scorer_width), nn.GELU(),
                                    nn.Linear(scorer_width, 1))
        self.mixer = nn.TransformerEncoderLayer(hidden_size, heads, dim_feedforward=hidden_size, dropout=0.0,
                                                batch_first=True, norm_first=True)
        self.out = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.out.weight)  # H_hat = H at the start
        nn.init.zeros_(self.out.bias)

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """Per-token harmfulness s [B, L] in [0, 1]."""
        return torch.sigmoid(self.scorer(hidden).squeeze(-1))

    def target(self, hidden: torch.Tensor) -> torch.Tensor:
        """H_hat: what each position should become."""
        return hidden + self.out(self.mixer(hidden) - hidden)

    def forward(self, hidden: torch.Tensor, alpha: float = 1.0, token_mask: torch.Tensor | None = None,
                detach_gate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(H', s). `token_mask` [B, L] marks positions that may *start* a harmful span (real
        tokens, not BOS or padding); the gate still spreads to every later position.
        `detach_gate` (training): only the score loss trains the scorer -- the erase loss would
        otherwise raise whichever token is highest, often one after the concept, which the causal
        encoder has coloured with it."""
        if alpha == 0:
            return hidden, self.scores(hidden)
        s = self.scores(hidden)
        gating = s.detach() if detach_gate else s
        starts = gating if token_mask is None else gating * token_mask
        gate = (alpha * torch.cummax(starts, dim=1).values).clamp(0, 1)
        return hidden + gate[..., None] * (self.target(hidden) - hidden), s


# ------------------------------------------------------------------------------- the defense

class SanitizerDefense(PretrainedMixin, EmbeddingDefense):
    """ES in the guard stack: rewrites prompt_embeds; the record keeps the highest token score."""

    pretrained_kind = "sanitizer"
    weights_name = "sanitizer.safetensors"

    def __init__(self, sanitizer: EmbeddingSanitizer, config: dict, alpha: float = 1.0, name: str = "sanitizer") -> None:
        self.sanitizer, self.config, self.alpha, self.name = sanitizer.eval(), config, alpha, name

    def check_encoder(self, text_encoder, tokenizer) -> None:
        check_encoder("sanitizer", self.config, text_encoder, tokenizer)

    @torch.no_grad()
    def sanitize(self, prompt_embeds: torch.Tensor, input_ids: torch.Tensor, alpha: float | None = None):
        return self._sanitize(prompt_embeds, input_ids, alpha)

    def _sanitize(self, prompt_embeds: torch.Tensor, input_ids: torch.Tensor, alpha: float | None = None):
        mask = token_mask(input_ids, self.config["bos"], self.config["eos"]).to(prompt_embeds.device)
        self.sanitizer.to(prompt_embeds.device)  # a no-op once it is there; the encoder may be on a GPU
        out, s = self.sanitizer(prompt_embeds.float(), self.alpha if alpha is None else alpha, mask)
        return out.to(prompt_embeds.dtype), s * mask

    def differentiable(self, prompt_embeds: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return self._sanitize(prompt_embeds, input_ids)[0]

    def apply(self, prompt_embeds: torch.Tensor, input_ids: torch.Tensor,
              prompts: list[str]) -> tuple[torch.Tensor, list[Decision]]:
        out, s = self.sanitize(prompt_embeds, input_ids)
        top = s.max(dim=1).values
        return out, [self.decision(max_score=float(v), alpha=self.alpha) for v in top]

    def explain(self, prompt: str, text_encoder, tokenizer) -> list[dict]:
        """Each token (BPE piece) of the prompt with its harmfulness score and the word it belongs to."""
        ids = tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            hidden = text_encoder(ids.to(text_encoder.device))[0]
        _, s = self.sanitize(hidden, ids)
        n = int(token_mask(ids, self.config["bos"], self.config["eos"])[0].sum())
        tokens = tokenizer.convert_ids_to_tokens(ids[0, 1:1 + n].tolist())
        return [{"token": t.replace("</w>", ""), "word": w, "word_index": k, "score": float(v)}
                for t, (k, w), v in zip(tokens, words_of_pieces(tokens), s[0, 1:1 + n])]

    # ------------------------------------------------------------------------------ storage

    def pretrained_config(self) -> dict:
        return self.config

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.sanitizer.state_dict()

    @classmethod
    def from_state(cls, config: dict, tensors: dict[str, torch.Tensor], alpha: float = 1.0,  # type: ignore[override]
                   name: str = "sanitizer") -> SanitizerDefense:
        net = EmbeddingSanitizer(config["hidden_size"], config.get("scorer_width", 256))
        net.load_state_dict(tensors)
        return cls(net, config, alpha, name)


# ------------------------------------------------------------------------------- training data

@dataclass
class SanitizerData:
    target: torch.Tensor  # H of prompts with the concept [N, 77, d]
    target_mask: torch.Tensor  # real-token mask [N, 77]
    anchor_aligned: torch.Tensor  # H of each anchor twin, gathered at the aligned positions [N, 77, d]
    labels: torch.Tensor  # 1 on concept-phrase tokens [N, 77]
    benign: torch.Tensor  # H of benign prompts, anchors included [M, 77, d]
    benign_mask: torch.Tensor


def build_data(domain: Domain, concepts: Sequence[Concept], text_encoder, tokenizer, pairs: int, benign: int,
               seed: int) -> SanitizerData:
    targets, anchors = domain.concept_twins(concepts, pairs, seed)
    h_t, ids_t = encode(text_encoder, tokenizer, targets)
    h_a, ids_a = encode(text_encoder, tokenizer, anchors)
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    index, labels = aligned_twins(ids_t, ids_a, eos)
    h_b, ids_b = encode(text_encoder, tokenizer, domain.benign_prompts(benign, seed + 1) + anchors)
    return SanitizerData(h_t, token_mask(ids_t, bos, eos), gather_positions(h_a, index), labels, h_b,
                         token_mask(ids_b, bos, eos))


# ----------------------------------------------------------------------------------- training

@dataclass
class SanitizerConfig:
    pairs: int = 400  # per concept
    benign: int = 800
    steps: int = 600
    batch: int = 64
    lr: float = 1e-3
    w_erase: float = 1.0
    w_keep: float = 1.0
    w_score: float = 0.1
    seed: int = 0


def train_sanitizer(domain: Domain, concepts: Sequence[Concept], text_encoder, tokenizer,
                    cfg: SanitizerConfig = SanitizerConfig(), progress: Progress | None = None) -> SanitizerDefense:
    """Train ES from text alone for one or several concepts (training text from the domain)."""
    torch.manual_seed(cfg.seed)
    data = build_data(domain, concepts, text_encoder, tokenizer, cfg.pairs, cfg.benign, cfg.seed)
    d = data.target.shape[-1]
    net = EmbeddingSanitizer(d)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.01)
    rng = np.random.default_rng(cfg.seed)
    scale = float(data.benign.pow(2).mean())  # losses relative to the embeddings' own size
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * (1 - step / cfg.steps))
        i = torch.from_numpy(rng.integers(0, len(data.target), cfg.batch))
        j = torch.from_numpy(rng.integers(0, len(data.benign), cfg.batch))
        out_t, s_t = net(data.target[i], 1.0, data.target_mask[i], detach_gate=True)
        out_b, s_b = net(data.benign[j], 1.0, data.benign_mask[j], detach_gate=True)
        erase = F.mse_loss(out_t, data.anchor_aligned[i]) / scale
        keep = F.mse_loss(out_b, data.benign[j]) / scale
        score = (F.binary_cross_entropy(s_t, data.labels[i], weight=data.target_mask[i] + 1e-3)
                 + F.binary_cross_entropy(s_b, torch.zeros_like(s_b), weight=data.benign_mask[j] + 1e-3))
        loss = cfg.w_erase * erase + cfg.w_keep * keep + cfg.w_score * score
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        report(progress, f"train sanitizer {'+'.join(c.name for c in concepts)}", step + 1, cfg.steps,
               f"loss {loss.item():.4f}")
    config = {"concepts": [c.name for c in concepts], "scorer_width": 256,
              **encoder_identity(text_encoder, tokenizer, domain.model_id), "train": dict(cfg.__dict__)}
    return SanitizerDefense(net.eval(), config)


@DEFENSES.register("sanitizer", alpha=1.0)
@DEFENSES.register("sanitizer-a0", alpha=0.0)
@DEFENSES.register("sanitizer-a0.5", alpha=0.5)
@DEFENSES.register("sanitizer-a2", alpha=2.0)
def build_sanitizer(concept: Concept, ctx: BuildContext, alpha: float) -> SanitizerDefense:
    """One trained sanitizer per (model, concept), cached; `alpha` scales its gates at use."""
    cfg = ctx.recipe(SanitizerConfig())
    trained = ctx.load_or_train("sanitizer", concept, cfg,
                                lambda: train_sanitizer(ctx.domain, [concept], ctx.pipe.text_encoder,
                                                        ctx.pipe.tokenizer, cfg, progress=ctx.progress),
                                SanitizerDefense.from_pretrained)
    trained.alpha, trained.name = alpha, "sanitizer" if alpha == 1 else f"sanitizer-a{alpha:g}"
    return trained
