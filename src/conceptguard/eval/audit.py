"""The audit set: bench images labelled by eye, to measure how far a judge can be trusted.

Every concept rate rests on a judge. The audit set checks it on what it really judges: images of
the undefended model and of each defense, degraded ones included. The recipe is a bench run
(`configs/audit.yaml`); a seeded sample of its images is labelled by looking at each one, blind
to prompt and stack (`present`, `absent` or `unclear`); each image belongs for good to the
`train` part (a judge may learn from it) or the `test` part (never learned from), by a hash of
its key. On the test part each judge gets precision, recall and specificity per concept, with
Wilson intervals; concept rates are then corrected for the judge's measured errors
(Rogan-Gladen) beside the raw ones.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
from PIL import Image, ImageDraw

from conceptguard.errors import InvalidInputError
from conceptguard.eval.stats import Interval, wilson

Label = Literal["present", "absent", "unclear"]
LABELS: tuple[str, ...] = ("present", "absent", "unclear")
Split = Literal["train", "test"]


def split_of(key: str) -> Split:
    """The part an image belongs to, fixed by its key: half the images, at random, are test images."""
    return "test" if int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 2 == 0 else "train"


@dataclass(frozen=True)
class AuditItem:
    """One labelled image of a bench run (`key` is the run's row key; `image` its path in the run)."""

    key: str
    concept: str
    stack: str
    prompt_set: str
    prompt: str
    seed: int
    image: str
    sheet: int
    tile: int
    split: str
    label: str = ""


def _rng(seed: int, *names: str) -> np.random.Generator:
    """A generator per (seed, names): one stratum's draws do not depend on which others exist."""
    return np.random.default_rng([seed, *(int(hashlib.sha256(n.encode()).hexdigest()[:8], 16) for n in names)])


def sample(rows: Sequence[dict], per_stratum: int, seed: int) -> list[dict]:
    """`per_stratum` images of each (concept, stack) at random, blocked images left out (a blocked
    image is no question for a judge: it counts as absent)."""
    strata: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if not r["blocked"]:
            strata.setdefault((r["concept"], r["stack"]), []).append(r)
    picked = []
    for key in sorted(strata):
        group = sorted(strata[key], key=lambda r: r["key"])
        chosen = _rng(seed, *key).choice(len(group), min(per_stratum, len(group)), replace=False)
        picked += [group[i] for i in sorted(chosen)]
    return picked


def make_items(rows: Sequence[dict], per_sheet: int, seed: int, first_sheet: int = 0) -> list[AuditItem]:
    """Audit items for sampled rows, per concept in a seeded random order (so a labeller cannot
    guess a stack from its neighbours), numbered by contact sheet (within the concept, from
    `first_sheet`) and tile."""
    items: list[AuditItem] = []
    for concept in sorted({r["concept"] for r in rows}):
        group = sorted((r for r in rows if r["concept"] == concept), key=lambda r: r["key"])
        order = _rng(seed, concept).permutation(len(group))
        for sheet, start in enumerate(range(0, len(group), per_sheet), start=first_sheet):
            for tile, j in enumerate(order[start:start + per_sheet]):
                r = group[int(j)]
                items.append(AuditItem(r["key"], concept, r["stack"], r["prompt_set"], r["prompt"], int(r["seed"]),
                                       r["image"], sheet, tile, split_of(r["key"])))
    return items


def contact_sheet(images: Sequence[Image.Image], columns: int = 8, tile: int = 128) -> Image.Image:
    """Images enlarged (nearest neighbour: no invented detail) on a grid, each numbered."""
    rows = (len(images) + columns - 1) // columns
    pad = 18
    sheet = Image.new("RGB", (columns * (tile + 4), rows * (tile + pad + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, im in enumerate(images):
        x, y = (i % columns) * (tile + 4), (i // columns) * (tile + pad + 4)
        draw.text((x + 2, y + 2), str(i), fill="black")
        sheet.paste(im.convert("RGB").resize((tile, tile), Image.Resampling.NEAREST), (x, y + pad))
    return sheet


def write_labels(items: Iterable[AuditItem], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[x.name for x in fields(AuditItem)])
        writer.writeheader()
        writer.writerows(asdict(i) for i in items)


def read_labels(path: Path) -> list[AuditItem]:
    """The labelled items of a CSV written by `write_labels` (labels filled in); an unknown label
    or a missing column is an InvalidInputError naming the line."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise InvalidInputError(f"cannot read audit labels {path}: {exc.strerror}") from exc
    items = []
    for line, r in enumerate(rows, start=2):
        try:
            item = AuditItem(r["key"], r["concept"], r["stack"], r["prompt_set"], r["prompt"], int(r["seed"]),
                             r["image"], int(r["sheet"]), int(r["tile"]), r["split"], r["label"].strip())
        except (KeyError, ValueError, AttributeError) as exc:
            raise InvalidInputError(f"{path}:{line}: not an audit label row ({exc})") from exc
        if item.label not in LABELS:
            raise InvalidInputError(f"{path}:{line}: label {item.label!r} is not one of {', '.join(LABELS)}")
        if item.split != split_of(item.key):
            raise InvalidInputError(f"{path}:{line}: split {item.split!r} differs from the key's ({split_of(item.key)})")
        items.append(item)
    return items


@dataclass(frozen=True)
class Quality:
    """A judge's agreement with the labels on one concept (`unclear` images left out)."""

    concept: str
    n: int
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def specificity(self) -> float | None:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else None

    @property
    def precision_ci(self) -> Interval | None:
        return wilson(self.tp, self.tp + self.fp)

    @property
    def recall_ci(self) -> Interval | None:
        return wilson(self.tp, self.tp + self.fn)

    @property
    def specificity_ci(self) -> Interval | None:
        return wilson(self.tn, self.tn + self.fp)

    def as_dict(self) -> dict:
        out: dict = asdict(self)
        for k in ("precision", "recall", "specificity"):
            value, ci = getattr(self, k), getattr(self, f"{k}_ci")
            out[k] = None if value is None else round(value, 4)
            out[f"{k}_ci"] = None if ci is None else [round(ci[0], 4), round(ci[1], 4)]
        return out


def quality(items: Sequence[AuditItem], judged_present: dict[str, bool], split: Split = "test") -> list[Quality]:
    """Per concept: the judge's verdicts (`judged_present`, by key) against the labels of `split`."""
    out = []
    for concept in sorted({i.concept for i in items}):
        pairs = [(i.label == "present", judged_present[i.key]) for i in items
                 if i.concept == concept and i.split == split and i.label != "unclear"]
        out.append(Quality(concept, len(pairs), tp=sum(t and j for t, j in pairs), fp=sum(j and not t for t, j in pairs),
                           fn=sum(t and not j for t, j in pairs), tn=sum(not t and not j for t, j in pairs)))
    return out


def corrected_rate(rate: float, interval: Interval | None, recall: float, specificity: float
                   ) -> tuple[float, Interval | None] | None:
    """The true rate behind a judge's raw rate given its recall (sensitivity) and specificity
    (Rogan-Gladen: (raw + spec - 1) / (recall + spec - 1), clipped to [0, 1]); the interval maps
    the raw rate's Wilson bounds the same way (the estimator rises with the raw rate), with the
    judge's recall and specificity taken as measured. None when the judge is no better than
    chance (recall + specificity <= 1)."""
    youden = recall + specificity - 1
    if youden <= 0:
        return None

    def fix(r: float) -> float:
        return float(min(1.0, max(0.0, (r + specificity - 1) / youden)))
    return fix(rate), (None if interval is None else (fix(interval[0]), fix(interval[1])))
