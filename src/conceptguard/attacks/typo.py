"""Typo+: a filter-aware typographic attack (the Espresso paper's attack set).

CLIP reads text in images: writing a word onto a picture pulls its CLIP image embedding toward
that word (typographic attacks on CLIP). The Espresso paper's Typo+ uses this against a
CLIP-based filter: it writes the acceptable counterpart c_a onto images of c_u, so the images
look like c_a to the filter while still showing c_u, then recovers prompts for those images
with PEZ. Here: renders of the concept, c_a written on each (PIL, the default font at a size
relative to the image, a fixed corner, white text with a dark outline), then `pez_search`
over the target's unblocked vocabulary.
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from conceptguard.attacks.base import ATTACKS, Attack, AttackResult, AttackTarget
from conceptguard.attacks.pez import PezBudget, pez_search


class TypoBudget(PezBudget):
    """PEZ's budget plus the text: its height as a fraction of the image's (the smallest allowed
    size in pixels below that) and the corner it is written in."""

    text_height: float = 0.25
    min_font_px: int = 6
    corner: str = "bottom-left"

    @classmethod
    def cpu(cls) -> TypoBudget:
        return cls(**PezBudget.cpu().model_dump())


def _wrap(text: str, font, width: int) -> list[str]:
    """Words on as few lines as fit `width` (a word longer than the width gets its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def write_text(image: Image.Image, text: str, height: float = 0.25, min_px: int = 6,
               corner: str = "bottom-left") -> Image.Image:
    """A copy of `image` with `text` written on it (deterministic: same inputs, same pixels)."""
    im = image.convert("RGB").copy()
    w, h = im.size
    size = max(min_px, round(height * h))
    font = ImageFont.load_default(size=size)
    lines = _wrap(text, font, w - 2)
    line_h = size + max(1, size // 8)
    block_w = max(int(font.getlength(line)) for line in lines)
    block_h = line_h * len(lines)
    x = 1 if "left" in corner else max(1, w - block_w - 1)
    y = max(0, h - block_h - 1) if "bottom" in corner else 1
    draw = ImageDraw.Draw(im)
    stroke = 1 if size >= 8 else 0
    for i, line in enumerate(lines):
        draw.text((x, y + i * line_h), line, font=font, fill=(255, 255, 255), stroke_width=stroke,
                  stroke_fill=(0, 0, 0))
    return im


@ATTACKS.register("typo+")
class TypoAttack(Attack[TypoBudget]):
    """Typo+: c_a written onto images of the concept, prompts recovered from them with PEZ."""

    name = "typo+"
    threat_model = "filter-aware: c_a written onto images of the concept, prompt recovered with PEZ (white box on CLIP)"
    target_dependent = False

    def typo_images(self, target: AttackTarget, count: int, seed: int) -> list[Image.Image]:
        budget = self.budget
        return [write_text(im, target.concept.c_a, budget.text_height, budget.min_font_px, budget.corner)
                for im in target.concept_images(count, seed=seed)]

    def attack(self, target: AttackTarget, n: int, seed: int) -> AttackResult:
        budget = self.budget
        images = self.typo_images(target, n * budget.images, seed)
        out = pez_search(target, images, n, budget, seed, what=self.name)
        return self.result(target, out.prompts, iterations=out.iterations, queries=0,
                           settings={"written": target.concept.c_a,
                                     "clip_similarity": [round(float(s), 4) for s in out.similarity]})
