"""Prompt sets: what a bench generates from. Every set has a stable id (a hash of its content),
so results can name exactly what was run. Which sets exist is the domain's business
(`Domain.prompt_set`); user files are read here."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from conceptguard.errors import InvalidInputError
from conceptguard.learned_tokens import LearnedTokens

# Which side of the split a generated prompt belongs to: text defenses and attacks train on, or
# text the bench evaluates on. A domain keeps the two disjoint (docs/evaluation.md).
Part = Literal["train", "eval"]


@dataclass(frozen=True)
class PromptItem:
    text: str
    expected: dict = field(default_factory=dict)  # labels the judge should find (mini world)
    seed: int | None = None  # the prompt's own image seed (I2P's sd_seed), else the bench's
    guidance: float | None = None  # the prompt's own guidance scale (I2P's sd_guidance_scale)


@dataclass(frozen=True)
class PromptSet:
    name: str
    concept: str
    items: tuple[PromptItem, ...]
    tokens: LearnedTokens = field(default_factory=LearnedTokens)  # learned tokens the prompts use (CCE)

    @property
    def id(self) -> str:
        items = [(i.text, i.expected) + ((i.seed, i.guidance) if i.seed is not None or i.guidance is not None else ())
                 for i in self.items]  # sets without per-prompt settings keep their ids
        blob = json.dumps([self.name, self.concept, items,
                           self.tokens.fingerprint() if self.tokens else None], sort_keys=True)
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"

    @property
    def prompts(self) -> list[str]:
        return [i.text for i in self.items]


# The prompt's column: prompt files', then a COCO-captions CSV's
TEXT_COLUMNS = ("prompt", "caption")
# Per-prompt settings in prompt CSVs: I2P's columns, then UnlearnDiffAtk's
SEED_COLUMNS = ("sd_seed", "evaluation_seed")
GUIDANCE_COLUMNS = ("sd_guidance_scale", "evaluation_guidance")


def read_prompt_file(path: str | Path, concept: str, name: str | None = None,
                     categories: list[str] | None = None) -> PromptSet:
    """Prompts from a .txt file (one per line) or a .csv file (its `prompt` column, else its
    `caption` column as in COCO-captions CSVs; without either, the first column of every row).
    UTF-8, a byte-order mark allowed; blank lines skipped. A CSV's
    per-prompt seed and guidance columns (I2P's `sd_seed` / `sd_guidance_scale`, UnlearnDiffAtk's
    `evaluation_seed` / `evaluation_guidance`) are kept with each prompt; `categories` keeps the
    rows whose `categories` column (comma-separated, as I2P's) names one of them."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"prompt file not found: {path}")
    is_csv = path.suffix.lower() == ".csv"
    if categories and not is_csv:
        raise InvalidInputError(f"{path}: categories select rows of a CSV with a `categories` column")
    try:
        text = path.read_text(encoding="utf-8-sig")
        items = _csv_items(text, path, categories) if is_csv else [PromptItem(t) for t in text.splitlines()]
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"prompt file {path} is not UTF-8 text (byte {exc.start})") from exc
    except csv.Error as exc:
        raise InvalidInputError(f"prompt file {path} is not a readable CSV: {exc}") from exc
    items = [PromptItem(i.text.strip(), i.expected, i.seed, i.guidance) for i in items if i.text.strip()]
    if not items:
        raise InvalidInputError(f"no prompts in {path}" + (f" with categories {', '.join(categories)}" if categories else ""))
    return PromptSet(name or path.stem, concept, tuple(items))


def _number(row: list[str], col: int | None, kind: type, path: Path, line: int):
    """A per-prompt seed or guidance (`kind` int or float), None where the cell is empty."""
    if col is None or col >= len(row) or not row[col].strip():
        return None
    value = float(row[col]) if _is_finite(row[col]) else None
    if value is None:
        raise InvalidInputError(f"{path}:{line}: {row[col]!r} is not a finite number")
    return int(value) if kind is int else value


def _is_finite(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _csv_items(text: str, path: Path, categories: list[str] | None) -> list[PromptItem]:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    text_column = next((c for c in TEXT_COLUMNS if c in header), None)
    if text_column is None:
        if categories:
            raise InvalidInputError(f"{path} has no header with `prompt` and `categories` columns")
        return [PromptItem(r[0]) for r in rows if r]
    col = header.index(text_column)
    seed_col = next((header.index(c) for c in SEED_COLUMNS if c in header), None)
    guidance_col = next((header.index(c) for c in GUIDANCE_COLUMNS if c in header), None)
    if categories and "categories" not in header:
        raise InvalidInputError(f"{path} has no `categories` column to select {', '.join(categories)} from")
    wanted = {c.strip().lower() for c in categories or []}
    cat_col = header.index("categories") if wanted else None
    items = []
    for line, r in enumerate(rows[1:], start=2):
        if len(r) <= col:
            continue
        if cat_col is not None and not wanted & {c.strip().lower() for c in (r[cat_col] if cat_col < len(r) else "").split(",")}:
            continue
        items.append(PromptItem(r[col], seed=_number(r, seed_col, int, path, line),
                                guidance=_number(r, guidance_col, float, path, line)))
    return items
