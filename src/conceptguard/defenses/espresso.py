"""Espresso: a CLIP filter on generated images that decides, per concept, whether an image shows
the unacceptable concept c_u or its acceptable counterpart c_a (docs/espresso.md).

    p_u = softmax(s * [cos(x, t_u), cos(x, t_a)])[0]      flag when p_u > tau

Fine-tuning (`finetune`) trains only the text side (text tower + text projection) so that t_u
and t_a move apart while each stays paired with its generated images; the vision tower is
frozen, so image embeddings stay valid. The decision is a hyperplane in image-embedding space,
which gives every image a certified radius (`certified_radii`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from PIL import ImageFilter as PILImageFilter

from conceptguard.concepts import Concept
from conceptguard.defenses.base import CertifiedImageFilter, Decision
from conceptguard.defenses.pretrained import PretrainedMixin
from conceptguard.defenses.registry import DEFENSES, BuildContext
from conceptguard.domain import Domain
from conceptguard.errors import InvalidInputError
from conceptguard.generation import TRAINING_SEEDS, generate
from conceptguard.models import ClipEmbedder, load_clip
from conceptguard.progress import Progress, report

Mode = Literal["softmax", "projection"]


# ------------------------------------------------------------------------------- the decision

def p_unacceptable(x: torch.Tensor, t_u: torch.Tensor, t_a: torch.Tensor, scale: float,
                   mode: Mode = "softmax") -> torch.Tensor:
    """p_u per image. x: [N, d] normalised image embeddings; t_u, t_a: [d] normalised.

    `projection` is the paper's earlier variant as its code computes it: x projected on the unit
    direction of t_u - t_a (through the origin), then a softmax over the negative distances of that
    projection to t_u and to t_a, at temperature 1 (`scale` is not used)."""
    if mode == "softmax":
        return torch.softmax(scale * torch.stack([x @ t_u, x @ t_a], -1), -1)[:, 0]
    d = F.normalize(t_u - t_a, dim=-1)
    proj = (x @ d)[:, None] * d
    return torch.softmax(-torch.stack([(proj - t_u).norm(dim=-1), (proj - t_a).norm(dim=-1)], -1), -1)[:, 0]


def signed_radii(x: torch.Tensor, t_u: torch.Tensor, t_a: torch.Tensor, scale: float,
                 tau: float = 0.5) -> torch.Tensor:
    """Signed L2 distance of each image embedding to the decision hyperplane
    s*(x.d) = log(tau/(1-tau)), d = t_u - t_a: positive on the unacceptable side."""
    d = t_u - t_a
    return (scale * (x @ d) - math.log(tau / (1 - tau))) / (scale * d.norm())


def certified_radii(x: torch.Tensor, t_u: torch.Tensor, t_a: torch.Tensor, scale: float,
                    tau: float = 0.5) -> torch.Tensor:
    """L2 distance of each image embedding to the decision hyperplane: no perturbation of x
    smaller than this flips the softmax decision."""
    return signed_radii(x, t_u, t_a, scale, tau).abs()


def certified_accuracy(radii: np.ndarray, correct: np.ndarray, eps: float) -> float:
    """Share of images that are classified correctly *and* have radius > eps."""
    return float(np.mean(correct & (radii > eps))) if len(radii) else float("nan")


@dataclass
class ConceptPair:
    """One concept as the filter sees it: its name, the two texts and their embeddings."""

    name: str
    text_u: str
    text_a: str
    t_u: torch.Tensor
    t_a: torch.Tensor


# ----------------------------------------------------------------------------------- the filter

@DEFENSES.register("espresso")
class EspressoFilter(PretrainedMixin, CertifiedImageFilter):
    """An ImageFilter over one or more concepts; flagged images are replaced (black, blur or a
    given image). The record keeps p_u per concept. Per image: one vision forward pass."""

    name = "espresso"
    pretrained_kind = "espresso"
    weights_name = "espresso.safetensors"

    def __init__(self, embedder: ClipEmbedder, concepts: Sequence[Concept], tau: float = 0.5,
                 mode: Mode = "softmax", replacement: str | Image.Image = "black",
                 text_model: torch.nn.Module | None = None, text_projection: torch.nn.Module | None = None,
                 name: str = "espresso") -> None:
        if not concepts:
            raise InvalidInputError("Espresso needs at least one concept")
        if not 0 < tau < 1:
            raise InvalidInputError(f"tau must lie in (0, 1), not {tau}")
        if mode not in ("softmax", "projection"):
            raise InvalidInputError(f"mode must be 'softmax' or 'projection', not {mode!r}")
        if isinstance(replacement, str) and replacement not in ("black", "blur"):
            raise InvalidInputError(f"replacement must be 'black', 'blur' or an image, not {replacement!r}")
        self.embedder, self.tau, self.mode, self.replacement, self.name = embedder, tau, mode, replacement, name
        # the text side: the base CLIP's unless a fine-tuned one is given
        self.training_summary: dict = {}  # how a fine-tuned filter was trained (saved with it)
        self.text_model = text_model or embedder.clip.text_model
        self.text_projection = text_projection or embedder.clip.text_projection
        self.concepts = [self._pair(c) for c in concepts]

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return _text_embeds(self.text_model, self.text_projection, self.embedder.processor.tokenizer, texts)

    def _pair(self, concept: Concept) -> ConceptPair:
        text_u, text_a = concept.filter_texts
        t = self.embed_texts([text_u, text_a])  # cached: computed once per concept
        return ConceptPair(concept.name, text_u, text_a, t[0], t[1])

    @property
    def scale(self) -> float:
        return self.embedder.logit_scale

    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        """Normalised CLIP image embeddings: the space the decision and its radius live in."""
        return self.embedder.images(images)

    def scores(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """p_u per concept for each image."""
        x = self.embedder.images(images)
        return {c.name: p_unacceptable(x, c.t_u, c.t_a, self.scale, self.mode) for c in self.concepts}

    def check(self, images: list[Image.Image], prompts: list[str]) -> list[Decision]:
        scores = self.scores(images)
        out = []
        for i in range(len(images)):
            flagged = [c for c, p in scores.items() if float(p[i]) > self.tau]
            out.append(self.decision(blocked=bool(flagged),
                                     reason=f"shows {', '.join(flagged)}" if flagged else None,
                                     **{f"p_u_{c}": float(p[i]) for c, p in scores.items()}))
        return out

    def replace(self, image: Image.Image) -> Image.Image:
        if isinstance(self.replacement, Image.Image):
            return self.replacement.convert("RGB").resize(image.size)
        if self.replacement == "blur":
            return image.filter(PILImageFilter.GaussianBlur(radius=max(image.size) / 8))
        return Image.new("RGB", image.size)

    def certify(self, images: list[Image.Image], unacceptable: Sequence[bool],
                concept: str | None = None) -> dict[str, np.ndarray]:
        """Radius and correctness per image for one concept (the first by default)."""
        c = self._concept(concept)
        x = self.embedder.images(images)
        p = p_unacceptable(x, c.t_u, c.t_a, self.scale, "softmax")
        truth = np.asarray(unacceptable, dtype=bool)
        p = p.cpu()
        return {"radius": certified_radii(x, c.t_u, c.t_a, self.scale, self.tau).cpu().numpy(),
                "correct": (p.numpy() > self.tau) == truth, "p_u": p.numpy()}

    def _concept(self, name: str | None) -> ConceptPair:
        if name is None:
            return self.concepts[0]
        for c in self.concepts:
            if c.name == name:
                return c
        raise InvalidInputError(f"this filter has no concept {name!r}; it has {', '.join(c.name for c in self.concepts)}")

    # ----------------------------------------------------------------------------- storage

    @classmethod
    def build(cls, concept: Concept, ctx: BuildContext) -> EspressoFilter:
        return cls(ctx.embedder, [concept])

    @property
    def config(self) -> dict:
        """The base CLIP (the embedder's), the decision's settings, the concepts' texts, and how
        the filter was trained (when it was)."""
        return {"base_clip": self.embedder.name, "tau": self.tau, "mode": self.mode, "name": self.name,
                "hidden_size": getattr(self.text_model, "config").hidden_size,
                "concepts": [{"name": c.name, "text_u": c.text_u, "text_a": c.text_a} for c in self.concepts],
                **self.training_summary}

    def pretrained_config(self) -> dict:
        return self.config

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The text side and the cached concept embeddings; the frozen vision tower is not copied."""
        tensors = {f"text_model.{k}": v for k, v in self.text_model.state_dict().items()}
        tensors.update({f"text_projection.{k}": v for k, v in self.text_projection.state_dict().items()})
        tensors.update({f"concepts.{c.name}/{w}": getattr(c, w) for c in self.concepts for w in ("t_u", "t_a")})
        return tensors

    @classmethod
    def from_state(cls, config: dict, tensors: dict[str, torch.Tensor], embedder: ClipEmbedder | None = None,  # type: ignore[override]
                   tau: float | None = None) -> EspressoFilter:
        if embedder is None:
            embedder = ClipEmbedder(*load_clip(config["base_clip"]))
        if embedder.clip.text_model.config.hidden_size != config["hidden_size"]:
            raise InvalidInputError(f"this filter was trained for a text encoder of width {config['hidden_size']}, "
                                    f"this CLIP's is {embedder.clip.text_model.config.hidden_size}")
        text_model = copy.deepcopy(embedder.clip.text_model)
        projection = copy.deepcopy(embedder.clip.text_projection)
        text_model.load_state_dict({k[len("text_model."):]: v for k, v in tensors.items() if k.startswith("text_model.")})
        projection.load_state_dict({k[len("text_projection."):]: v for k, v in tensors.items()
                                    if k.startswith("text_projection.")})
        self = cls.__new__(cls)
        CertifiedImageFilter.__init__(self)
        self.embedder, self.text_model, self.text_projection = embedder, text_model.eval(), projection
        self.tau = config["tau"] if tau is None else tau
        self.mode, self.replacement, self.name = config["mode"], "black", config.get("name", "espresso")
        device = embedder.clip.device  # the file's tensors load on the CPU; image embeddings are on the CLIP's device
        self.concepts = [ConceptPair(c["name"], c["text_u"], c["text_a"], tensors[f"concepts.{c['name']}/t_u"].to(device),
                                     tensors[f"concepts.{c['name']}/t_a"].to(device)) for c in config["concepts"]]
        self.training_summary = {k: config[k] for k in ("best_epoch", "history", "before") if k in config}
        return self


def _text_embeds(text_model, projection, tokenizer, texts: list[str]) -> torch.Tensor:
    tok = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    device = next(text_model.parameters()).device
    pooled = text_model(input_ids=tok.input_ids.to(device), attention_mask=tok.attention_mask.to(device)).pooler_output
    return F.normalize(projection(pooled).float(), dim=-1)


# --------------------------------------------------------------------------------- fine-tuning

@dataclass
class FinetuneConfig:
    """The paper's reference hyper-parameters (docs/espresso.md; the optimizer also takes betas (0.9, 0.98), eps 1e-6)."""

    pairs: int = 96
    val_pairs: int = 48
    epochs: int = 30
    batch: int = 10
    lr: float = 5e-5
    weight_decay: float = 0.2
    a_separation: float = 1.0
    a_pairing: float = 1.0
    a_margin: float = 1.0
    margin: float = 0.6  # wanted certified radius (L2 in the normalised image-embedding space)
    a_preserve: float = 1.0
    seed: int = 0


@dataclass
class FinetuneResult:
    filter: EspressoFilter
    history: list[dict]  # per epoch: loss, val FNR, val FPR, margin
    best_epoch: int
    before: dict  # validation FNR/FPR of the un-fine-tuned filter
    images: dict  # the generated validation images and their intended labels, for certification


def _clip_loss(x: torch.Tensor, t: torch.Tensor, scale: float) -> torch.Tensor:
    """Symmetric CLIP contrastive loss between paired image and text embeddings."""
    logits = scale * x @ t.T
    labels = torch.arange(len(x), device=x.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _validate(x_u: torch.Tensor, x_a: torch.Tensor, t: torch.Tensor, scale: float, tau: float) -> dict:
    p_u = p_unacceptable(x_u, t[0], t[1], scale)
    p_a = p_unacceptable(x_a, t[0], t[1], scale)
    radii = certified_radii(torch.cat([x_u, x_a]), t[0], t[1], scale, tau)
    return {"fnr": float((p_u <= tau).float().mean()), "fpr": float((p_a > tau).float().mean()),
            "mean_radius": float(radii.mean())}


def finetune(pipe, domain: Domain, embedder: ClipEmbedder, concept: Concept, cfg: FinetuneConfig = FinetuneConfig(),
             tau: float = 0.5, progress: Progress | None = None,
             generate_fn: Callable[[list[str], list[int]], list[Image.Image]] | None = None) -> FinetuneResult:
    """Fine-tune the text side for one concept on (prompt, image) pairs generated by `pipe`.

    The checkpoint kept is the epoch with the lowest validation FNR + FPR (ties: larger mean
    certified radius). Training prompts (twins, unrelated scenes) come from the domain."""
    gen = generate_fn or (lambda prompts, seeds: generate(pipe, prompts, seeds))
    torch.manual_seed(cfg.seed)
    pairs = domain.twin_prompts(concept, cfg.pairs + cfg.val_pairs, seed=cfg.seed + 17)
    p_u, p_a = [u for u, _ in pairs], [a for _, a in pairs]
    seeds = [TRAINING_SEEDS + cfg.seed * 1_000_000 + i for i in range(len(pairs))]
    images_u, images_a = gen(p_u, seeds), gen(p_a, seeds)  # same seed: the twin differs only in text
    x_u, x_a = embedder.images(images_u), embedder.images(images_a)
    n = cfg.pairs
    tokenizer = embedder.processor.tokenizer
    text_model = copy.deepcopy(embedder.clip.text_model).train()
    projection = copy.deepcopy(embedder.clip.text_projection).train()
    params = list(text_model.parameters()) + list(projection.parameters())
    for p in params:
        p.requires_grad_(True)
    # Adam with coupled (L2) weight decay, as the paper's code (and the CLIP fine-tuning recipe it follows)
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=cfg.weight_decay)
    scale = embedder.logit_scale
    text_u, text_a = concept.filter_texts
    preserve = domain.unrelated_prompts(8, cfg.seed + 5)
    x_other = embedder.images(gen(preserve, [TRAINING_SEEDS + cfg.seed * 1_000_000 + 500_000 + i for i in range(len(preserve))]))
    with torch.no_grad():
        preserve_ref = _text_embeds(text_model, projection, tokenizer, preserve)
        t0 = _text_embeds(text_model, projection, tokenizer, [text_u, text_a])
    before = _validate(x_u[n:], x_a[n:], t0, scale, tau)
    best = (before["fnr"] + before["fpr"], -before["mean_radius"])
    best_state, best_epoch = _state(text_model, projection), 0
    history: list[dict] = []
    rng = np.random.default_rng(cfg.seed)
    steps_per_epoch = math.ceil(n / cfg.batch)
    total = cfg.epochs * steps_per_epoch
    for epoch in range(1, cfg.epochs + 1):
        order = rng.permutation(n)
        losses = []
        for k in range(steps_per_epoch):
            idx = order[k * cfg.batch:(k + 1) * cfg.batch]
            texts = [p_u[i] for i in idx] + [p_a[i] for i in idx]
            t = _text_embeds(text_model, projection, tokenizer, [text_u, text_a] + texts + preserve)
            t_c, t_p, t_keep = t[:2], t[2:2 + len(texts)], t[2 + len(texts):]
            xb_u, xb_a = x_u[idx], x_a[idx]
            separation = -((t_c[0] - t_c[1]) ** 2).sum()
            pairing = _clip_loss(torch.cat([xb_u, xb_a]), t_p, scale)
            # hinge on the certified radius itself (a margin on cos(x, t_u) - cos(x, t_a) is met
            # by stretching t_u - t_a, which the separation term does anyway, and leaves radii as
            # they were); unrelated scenes count as acceptable so they stay on c_a's side too
            r_u = signed_radii(xb_u, t_c[0], t_c[1], scale, tau)
            r_a = signed_radii(torch.cat([xb_a, x_other]), t_c[0], t_c[1], scale, tau)
            margin = F.relu(cfg.margin - r_u).mean() + F.relu(cfg.margin + r_a).mean()
            keep = ((t_keep - preserve_ref) ** 2).sum(-1).mean()
            loss = (cfg.a_separation * separation + cfg.a_pairing * pairing + cfg.a_margin * margin
                    + cfg.a_preserve * keep)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            report(progress, f"train espresso-ft {concept.name}", (epoch - 1) * steps_per_epoch + k + 1, total,
                   f"loss {losses[-1]:.4f}")
        with torch.no_grad():
            val = _validate(x_u[n:], x_a[n:], _text_embeds(text_model, projection, tokenizer, [text_u, text_a]),
                            scale, tau)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), **val})
        if (val["fnr"] + val["fpr"], -val["mean_radius"]) < best:
            best = (val["fnr"] + val["fpr"], -val["mean_radius"])
            best_state, best_epoch = _state(text_model, projection), epoch
    text_model.load_state_dict(best_state[0])
    projection.load_state_dict(best_state[1])
    text_model.eval().requires_grad_(False)
    projection.requires_grad_(False)
    filt = EspressoFilter(embedder, [concept], tau=tau, text_model=text_model, text_projection=projection,
                          name="espresso-ft")
    filt.training_summary = {"best_epoch": best_epoch, "history": history, "before": before}  # saved with the filter
    return FinetuneResult(filt, history, best_epoch, before,
                          {"images": images_u[n:] + images_a[n:], "unacceptable": [True] * (len(pairs) - n)
                           + [False] * (len(pairs) - n)})


def _state(text_model, projection) -> tuple[dict, dict]:
    return ({k: v.detach().clone() for k, v in text_model.state_dict().items()},
            {k: v.detach().clone() for k, v in projection.state_dict().items()})


FINETUNE_REVISION = 2  # 2: Adam with coupled weight decay, as the paper's code (1: AdamW)


@DEFENSES.register("espresso-ft")
def build_finetuned(concept: Concept, ctx: BuildContext) -> EspressoFilter:
    """Espresso fine-tuned for one concept on the model's own images, trained once and cached."""
    cfg = ctx.recipe(FinetuneConfig(seed=ctx.seed))
    return ctx.load_or_train("espresso-ft", concept, cfg,
                             lambda: finetune(ctx.pipe, ctx.domain, ctx.embedder, concept, cfg,
                                              progress=ctx.progress).filter,
                             lambda folder: EspressoFilter.from_pretrained(folder, embedder=ctx.embedder),
                             revision=FINETUNE_REVISION)
