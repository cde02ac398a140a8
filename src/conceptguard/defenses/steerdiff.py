"""SteerDiff: identify inappropriate spans in the per-token prompt embeddings, then steer the
embeddings away from them with a learned affine map (docs/steerdiff.md).

Identifier: every window of 1..9 consecutive real tokens, zero-padded to [9, d] and flattened,
is scored by an MLP (9d -> 100 -> 50 -> 1). Steering: if any window scores > threshold, every
token but BOS (EOS and padding included) becomes e' = (1 - eps) e + eps W(e), eps = 0.88; with
`spans_only`, only the flagged tokens are steered. W is fitted by least squares on token pairs
(a prompt with the concept, its twin with the safe counterpart), aligned position by position.
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
from conceptguard.defenses.text_data import aligned_twins, check_encoder, encode, encoder_identity, gather_positions, token_mask
from conceptguard.domain import Domain
from conceptguard.progress import Progress, report

MAX_WINDOW = 9


class Identifier(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(MAX_WINDOW * hidden_size, 100), nn.ReLU(), nn.Linear(100, 50), nn.ReLU(),
                                 nn.Linear(50, 1))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [N, 9, d] -> probability [N]."""
        return torch.sigmoid(self.net(windows.flatten(1)).squeeze(-1))


def _straight_through(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """1 where sigmoid(logit) > threshold, else 0, with the gradient of the soft flag
    sigmoid(logit - logit(threshold))."""
    soft = torch.sigmoid(logits - torch.logit(torch.tensor(threshold, device=logits.device)))
    hard = (torch.sigmoid(logits) > threshold).to(soft.dtype)
    return hard + soft - soft.detach()


def windows(hidden: torch.Tensor, start: int, end: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Every span of 1..9 tokens inside [start, end) of one prompt's hidden states [L, d],
    zero-padded to [9, d]. Returns the windows and their (first, last + 1) positions."""
    spans = [(i, j) for i in range(start, end) for j in range(i + 1, min(i + MAX_WINDOW, end) + 1)]
    out = hidden.new_zeros(len(spans), MAX_WINDOW, hidden.shape[-1])
    for k, (i, j) in enumerate(spans):
        out[k, :j - i] = hidden[i:j]
    return out, spans


class SteerDiff(PretrainedMixin, EmbeddingDefense):
    name = "steerdiff"
    pretrained_kind = "steerdiff"
    weights_name = "steerdiff.safetensors"

    def __init__(self, identifier: Identifier, steer: nn.Linear, config: dict, eps: float = 0.88,
                 threshold: float = 0.5, spans_only: bool = False, name: str = "steerdiff") -> None:
        self.identifier, self.steer_map, self._config = identifier.eval(), steer, config
        self.eps, self.threshold, self.spans_only, self.name = eps, threshold, spans_only, name

    def check_encoder(self, text_encoder, tokenizer) -> None:
        check_encoder("steerdiff", self.config, text_encoder, tokenizer)

    @torch.no_grad()
    def span_scores(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> list[list[tuple[int, int, float]]]:
        """Per prompt: (first, last + 1, score) of every window."""
        mask = token_mask(input_ids, self.config["bos"], self.config["eos"])
        self.identifier.to(hidden.device)  # a no-op once it is there; the encoder may be on a GPU
        out: list[list[tuple[int, int, float]]] = []
        for h, m in zip(hidden.float(), mask):
            n = int(m.sum())
            if n == 0:
                out.append([])
                continue
            wins, spans = windows(h, 1, 1 + n)
            scores = self.identifier(wins).tolist()
            out.append([(i, j, s) for (i, j), s in zip(spans, scores)])
        return out

    @torch.no_grad()
    def steer(self, prompt_embeds: torch.Tensor, input_ids: torch.Tensor,
              eps: float | None = None) -> tuple[torch.Tensor, list[float]]:
        """Steered embeddings and each prompt's highest window score."""
        return self._steer(prompt_embeds, input_ids, eps)

    def differentiable(self, prompt_embeds: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The steered embeddings for adaptive attacks, with a straight-through identifier: the
        forward pass is the defense's own (a window over the threshold steers), the backward pass
        differentiates a soft flag -- the identifier's probability, shifted so that it is 0.5 at
        the threshold -- so gradients reach the identifier and an attacker can learn to avoid it
        (a hard decision has no gradient)."""
        hidden = prompt_embeds.float()
        self.steer_map.to(hidden.device)
        self.identifier.to(hidden.device)
        moved = (1 - self.eps) * hidden + self.eps * self.steer_map(hidden)
        mask = token_mask(input_ids, self.config["bos"], self.config["eos"])
        rows = []
        for h, m, to in zip(hidden, mask, moved):
            n = int(m.sum())
            gate = h.new_zeros(len(h))
            if n:
                wins, spans = windows(h, 1, 1 + n)
                logits = self.identifier.net(wins.flatten(1)).squeeze(-1)
                if self.spans_only:  # each token: the highest window that covers it
                    covers = torch.tensor([[i <= k < j for i, j in spans] for k in range(1, 1 + n)], device=h.device)
                    gate[1:1 + n] = _straight_through(logits.expand(n, -1).masked_fill(~covers, -torch.inf).amax(1),
                                                      self.threshold)
                else:  # every token but BOS, EOS and padding included
                    gate[1:] = _straight_through(logits.max(), self.threshold)
            rows.append(h + gate[:, None] * (to - h))
        return torch.stack(rows).to(prompt_embeds.dtype)

    def _steer(self, prompt_embeds: torch.Tensor, input_ids: torch.Tensor,
               eps: float | None = None) -> tuple[torch.Tensor, list[float]]:
        eps = self.eps if eps is None else eps
        hidden = prompt_embeds.float()
        self.steer_map.to(hidden.device)
        moved = (1 - eps) * hidden + eps * self.steer_map(hidden)
        out = hidden.clone()
        tops = []
        for b, spans in enumerate(self.span_scores(hidden.detach(), input_ids)):
            flagged = [(i, j) for i, j, s in spans if s > self.threshold]
            tops.append(max((s for *_, s in spans), default=0.0))
            if not flagged:
                continue
            if self.spans_only:
                for i, j in flagged:
                    out[b, i:j] = moved[b, i:j]
            else:
                out[b, 1:] = moved[b, 1:]  # every token but BOS, EOS and padding included
        return out.to(prompt_embeds.dtype), tops

    def apply(self, prompt_embeds: torch.Tensor, input_ids: torch.Tensor,
              prompts: list[str]) -> tuple[torch.Tensor, list[Decision]]:
        out, tops = self.steer(prompt_embeds, input_ids)
        return out, [self.decision(max_score=t, steered=float(t > self.threshold)) for t in tops]

    def identify(self, prompt: str, text_encoder, tokenizer) -> list[dict]:
        """Flagged spans of a prompt, highest score first, overlapping spans merged into the best one."""
        hidden, ids = encode(text_encoder, tokenizer, [prompt])
        spans = sorted(self.span_scores(hidden, ids)[0], key=lambda x: -x[2])
        kept: list[tuple[int, int, float]] = []
        for i, j, s in spans:
            if s > self.threshold and all(j <= a or i >= b for a, b, _ in kept):
                kept.append((i, j, s))
        # `start`/`end` index the token ids (0 is the start token), `end` exclusive as in a slice;
        # `text` is the span decoded, BPE pieces joined into words.
        return [{"start": i, "end": j, "score": float(s), "text": tokenizer.decode(ids[0, i:j].tolist()).strip()}
                for i, j, s in kept]

    # ------------------------------------------------------------------------------ storage

    def pretrained_config(self) -> dict:
        return self.config

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"identifier.{k}": v for k, v in self.identifier.state_dict().items()}
        tensors.update({f"steer.{k}": v for k, v in self.steer_map.state_dict().items()})
        return tensors

    @property
    def config(self) -> dict:
        return {**self._config, "eps": self.eps, "threshold": self.threshold}

    @classmethod
    def from_state(cls, config: dict, tensors: dict[str, torch.Tensor], eps: float | None = None,  # type: ignore[override]
                   spans_only: bool = False, name: str = "steerdiff") -> SteerDiff:
        d = config["hidden_size"]
        identifier, steer = Identifier(d), nn.Linear(d, d)
        identifier.load_state_dict({k[11:]: v for k, v in tensors.items() if k.startswith("identifier.")})
        steer.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("steer.")})
        return cls(identifier, steer, config, config["eps"] if eps is None else eps, config["threshold"],
                   spans_only, name)


# ----------------------------------------------------------------------------------- training

@dataclass
class SteerDiffConfig:
    pairs: int = 400  # per concept
    benign: int = 800
    epochs: int = 30
    batch: int = 256
    lr: float = 1e-3
    ridge: float = 1e-2
    seed: int = 0


def _identifier_data(h_t, labels, h_b, ids_b, bos, eos) -> tuple[torch.Tensor, torch.Tensor]:
    """Positives: the windows that are exactly a concept phrase in context. Negatives: every
    window of the safe prompts (benign scenes and the anchor twins)."""
    pos, neg = [], []
    for h, lab in zip(h_t, labels):
        idx = lab.nonzero().flatten()
        if len(idx):
            i, j = int(idx.min()), int(idx.max()) + 1
            w = h.new_zeros(MAX_WINDOW, h.shape[-1])
            w[:min(j - i, MAX_WINDOW)] = h[i:i + min(j - i, MAX_WINDOW)]
            pos.append(w)
    mask = token_mask(ids_b, bos, eos)
    for h, m in zip(h_b, mask):
        n = int(m.sum())
        neg.append(windows(h, 1, 1 + n)[0])
    pos_t, neg_t = torch.stack(pos), torch.cat(neg)
    x = torch.cat([pos_t, neg_t])
    y = torch.cat([torch.ones(len(pos_t)), torch.zeros(len(neg_t))])
    return x, y


def fit_steering(h_t: torch.Tensor, aligned: torch.Tensor, h_b: torch.Tensor, ridge: float) -> nn.Linear:
    """Least squares W (affine) with W(concept-prompt token) ~ its twin's token and W(safe token) ~ itself."""
    x = torch.cat([h_t.reshape(-1, h_t.shape[-1]), h_b.reshape(-1, h_b.shape[-1])])
    y = torch.cat([aligned.reshape(-1, h_t.shape[-1]), h_b.reshape(-1, h_b.shape[-1])])
    xa = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    gram = xa.T @ xa + ridge * len(x) * torch.eye(xa.shape[1], dtype=torch.float64)
    sol = torch.linalg.solve(gram, xa.T @ y.double())
    d = h_t.shape[-1]
    lin = nn.Linear(d, d)
    with torch.no_grad():
        lin.weight.copy_(sol[:d].T.float())
        lin.bias.copy_(sol[d].float())
    return lin


def train_steerdiff(domain: Domain, concepts: Sequence[Concept], text_encoder, tokenizer,
                    cfg: SteerDiffConfig = SteerDiffConfig(), progress: Progress | None = None) -> SteerDiff:
    """Train the identifier and fit the steering map from text alone (training text from the domain)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    targets, anchors = domain.concept_twins(concepts, cfg.pairs, cfg.seed)
    h_t, ids_t = encode(text_encoder, tokenizer, targets)
    h_a, ids_a = encode(text_encoder, tokenizer, anchors)
    h_b, ids_b = encode(text_encoder, tokenizer, domain.benign_prompts(cfg.benign, cfg.seed + 1))
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    index, labels = aligned_twins(ids_t, ids_a, eos)
    x, y = _identifier_data(h_t, labels, torch.cat([h_b, h_a]), torch.cat([ids_b, ids_a]), bos, eos)
    identifier = Identifier(h_t.shape[-1])
    opt = torch.optim.Adam(identifier.parameters(), lr=cfg.lr)
    pos_weight = float((y == 0).sum() / max(1, int((y == 1).sum())))  # balance the few positives
    steps = cfg.epochs * int(np.ceil(len(x) / cfg.batch))
    step = 0
    for _ in range(cfg.epochs):
        order = torch.from_numpy(rng.permutation(len(x)))
        for k in range(0, len(x), cfg.batch):
            b = order[k:k + cfg.batch]
            p = identifier(x[b]).clamp(1e-6, 1 - 1e-6)
            weight = torch.where(y[b] == 1, pos_weight, 1.0)
            loss = F.binary_cross_entropy(p, y[b], weight=weight) / pos_weight ** 0.5
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            report(progress, f"train steerdiff {'+'.join(c.name for c in concepts)}", step, steps,
                   f"loss {loss.item():.4f}")
    steer = fit_steering(h_t, gather_positions(h_a, index), h_b, cfg.ridge)
    config = {"concepts": [c.name for c in concepts], **encoder_identity(text_encoder, tokenizer, domain.model_id),
              "train": dict(cfg.__dict__)}
    return SteerDiff(identifier, steer, config)


@DEFENSES.register("steerdiff")
@DEFENSES.register("steerdiff-spans", spans_only=True)
@DEFENSES.register("steerdiff-e0.25", eps=0.25)
@DEFENSES.register("steerdiff-e0.5", eps=0.5)
@DEFENSES.register("steerdiff-e0.75", eps=0.75)
@DEFENSES.register("steerdiff-e1", eps=1.0)
def build_steerdiff(concept: Concept, ctx: BuildContext, eps: float = 0.88, spans_only: bool = False) -> SteerDiff:
    """One trained SteerDiff per (model, concept), cached; `eps` and `spans_only` are set at use."""
    name = "steerdiff" + ("-spans" if spans_only else "") + ("" if eps == 0.88 else f"-e{eps:g}")
    cfg = ctx.recipe(SteerDiffConfig())
    folder = ctx.trained_dir("steerdiff", concept.name, cfg)
    ctx.load_or_train("steerdiff", concept, cfg,
                      lambda: train_steerdiff(ctx.domain, [concept], ctx.pipe.text_encoder, ctx.pipe.tokenizer, cfg,
                                              progress=ctx.progress),
                      SteerDiff.from_pretrained)
    return SteerDiff.from_pretrained(folder, eps=eps, spans_only=spans_only, name=name)
