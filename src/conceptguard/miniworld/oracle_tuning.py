"""The oracle's second stage: learn from the audit set's train part (generated images labelled by eye).

Trained on renders alone, the oracle misreads what defended models draw -- SLD's softened flames
and faces, ESD's pale blobs -- because it never saw such images (docs/evaluation.md, "The audit
set"). This stage fine-tunes the whole network from its render-trained weights on batches that
mix renders and VAE decodings (the first stage's data and degradations, so every attribute head
keeps what it learned) with labelled generated images of the audit set's `train` part. Images of
the `test` part are never read here: they are what the result is measured on.

A labelled image says one thing, whether its concept is shown; only that concept's output is
trained on it (the mark's sigmoid, or the texture head's `rings` probability for the artist style).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from conceptguard.miniworld.architectures import OracleNet
from conceptguard.miniworld.data import cached_render_set, to_tensor
from conceptguard.miniworld.oracle import CONCEPT_SIGNALS, Oracle, as_uint8_batch
from conceptguard.miniworld.scene import ATTRIBUTE_HEADS, MARKS, TEXTURES
from conceptguard.miniworld.train import (
    CPU,
    ORACLE_LATENT_NOISE,
    Device,
    StageConfig,
    _degrade,
    _oracle_targets,
    _rng,
    _run,
    reconstruct,
)
from conceptguard.progress import Progress

# The recipe's settings: a fine-tune (low rate, few steps) from the render-trained weights.
TUNING = StageConfig(steps=600, batch=64, lr=3e-4, warmup=50, checkpoint_every=200)
LABELLED_PER_BATCH = 48  # labelled generated images beside each batch's `TUNING.batch` renders
LABELLED_WEIGHT = 1.0  # their loss beside the renders' (attribute heads + marks)
ANCHOR_RENDERS = 10_000  # renders (and their decodings) that keep the attribute heads in place
RECIPE = f"audit-train-part|{TUNING}|{LABELLED_PER_BATCH}|{LABELLED_WEIGHT}|{ANCHOR_RENDERS}"


@dataclass(frozen=True)
class LabelledImages:
    """Generated images with, per image, the concept it was labelled for and whether it is shown."""

    images: np.ndarray  # uint8 N x 32 x 32 x 3
    concepts: list[str]
    present: np.ndarray  # bool N

    @classmethod
    def from_files(cls, paths: Sequence[Path], concepts: Sequence[str], present: Sequence[bool]) -> LabelledImages:
        from PIL import Image

        return cls(as_uint8_batch([Image.open(p).convert("RGB") for p in paths]), list(concepts),
                   np.asarray(present, bool))

    def __len__(self) -> int:
        return len(self.concepts)


def concept_log_probs(logits: dict[str, torch.Tensor], concepts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """log p and log(1 - p) of each image's own concept, in a numerically stable form."""
    pos, neg = [], []
    for i, concept in enumerate(concepts):
        signal = CONCEPT_SIGNALS[concept]
        if signal.startswith("texture:"):
            log_all = torch.log_softmax(logits["texture"][i], -1)
            j = TEXTURES.index(signal.split(":")[1])
            pos.append(log_all[j])
            neg.append(torch.logsumexp(torch.cat([log_all[:j], log_all[j + 1:]]), 0))
        else:
            z = logits["marks"][i, MARKS.index(signal)]
            pos.append(F.logsigmoid(z))
            neg.append(F.logsigmoid(-z))
    return torch.stack(pos), torch.stack(neg)


def _flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mirror half the images left-right: every concept's mark reads the same mirrored."""
    mirror = torch.rand(x.shape[0], generator=g) < 0.5
    return torch.where(mirror[:, None, None, None], x.flip(-1), x)


def tune_oracle(oracle: Oracle, labelled: LabelledImages, seed: int = 0, cfg: StageConfig = TUNING,
                report: Progress | None = None, device: Device = CPU, anchors: int = ANCHOR_RENDERS,
                vae=None) -> Oracle:
    """The oracle fine-tuned on `labelled` beside renders (and `vae`'s decodings of them, when given).

    Deterministic per seed: step i's batch comes from generators seeded by (seed, "oracle", i)
    offset past the first stage's steps, so no draw repeats one of the first stage."""
    net = OracleNet()
    net.load_state_dict(oracle.net.state_dict())
    # no more renders than the batches can draw (a short smoke run renders a few)
    images, scenes = cached_render_set(min(anchors, cfg.steps * cfg.batch), seed, allow_heldout=True)
    recon = reconstruct(vae, images, ORACLE_LATENT_NOISE, seed) if vae is not None else None
    targets = _oracle_targets(scenes)
    present = torch.from_numpy(labelled.present)
    pixels = to_tensor(labelled.images)
    first_stage = 1_000_000  # step offset: the first stage's generators are (seed, "oracle", i < 1e6)

    def batch(i: int) -> dict:
        rng, g = _rng(seed, "oracle", first_stage + i)
        idx = rng.integers(0, len(images), cfg.batch)
        picked = images[idx]
        if recon is not None:
            use = rng.random(cfg.batch) < 0.5
            picked = np.where(use[:, None, None, None], recon[idx], picked)
        # positives and negatives equally often: the audit set holds many more absent images
        j = _balanced(labelled.present, LABELLED_PER_BATCH, rng)
        extra = _flip(pixels[j], g)
        extra = (extra + torch.randn(extra.shape, generator=g) * 0.02).clamp(-1, 1)
        return {"x": _degrade(to_tensor(picked), g), "targets": {h: t[torch.from_numpy(idx)] for h, t in targets.items()},
                "labelled": extra, "concepts": [labelled.concepts[k] for k in j], "present": present[j]}

    def loss(b: dict) -> torch.Tensor:
        out, y = net(b["x"]), b["targets"]
        total = F.binary_cross_entropy_with_logits(out["marks"], y["marks"])
        total = total + sum(F.cross_entropy(out[h], y[h]) for h in ATTRIBUTE_HEADS)
        log_p, log_not_p = concept_log_probs(net(b["labelled"]), b["concepts"])
        labelled_loss = -torch.where(b["present"], log_p, log_not_p).mean()
        return total + LABELLED_WEIGHT * labelled_loss

    _run("oracle_audit", seed, net, batch, loss, cfg, report, variant=f"{RECIPE}|{_fingerprint(labelled)}",
         device=device)
    return Oracle(net.cpu().eval())


def _balanced(present: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    pos, neg = np.flatnonzero(present), np.flatnonzero(~present)
    if not len(pos) or not len(neg):
        return rng.integers(0, len(present), n)
    half = n // 2
    return np.concatenate([rng.choice(pos, half), rng.choice(neg, n - half)])


def _fingerprint(labelled: LabelledImages) -> str:
    import hashlib

    h = hashlib.sha256(labelled.images.tobytes())
    h.update("|".join(labelled.concepts).encode())
    h.update(labelled.present.tobytes())
    return h.hexdigest()[:12]
