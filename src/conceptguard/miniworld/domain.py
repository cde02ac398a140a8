"""The mini world as a domain: its five concepts, prompt sets, training text, renders, vocabulary.

Every prompt below is built from the world's caption grammar (world.py), deterministically
from a seed; renders come from the procedural renderer, so they carry true labels.
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np
from PIL import Image

from conceptguard.concepts import Concept
from conceptguard.domain import Domain
from conceptguard.errors import InvalidInputError
from conceptguard.miniworld.paths import AUDIT_DIR, MINIWORLD, clip_dir, fingerprint, oracle_dir
from conceptguard.miniworld.render import render
from conceptguard.miniworld.scene import HELDOUT_COMBOS, SHAPES, TEXTURES, sample_scene
from conceptguard.miniworld.world import (
    CONCEPTS,
    Phrasing,
    WorldConcept,
    caption_vocabulary,
    concept_prompts,
    draw_cell,
    part_rng,
    prompt,
    world_concept,
)
from conceptguard.prompts import Part, PromptItem, PromptSet

PROMPT_SETS = ("unacceptable", "paraphrase", "acceptable")
QUALITY = "quality.json"
# The weights each mini-world judge's measured quality belongs to.
JUDGE_WEIGHTS: dict[str, Callable[[], str]] = {"oracle": lambda: fingerprint(oracle_dir()),
                                               "clip": lambda: fingerprint(clip_dir())}


def concept_renders(concept: WorldConcept, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n renders: half show the concept, half its acceptable counterpart. -> (images, present)."""
    rng = np.random.default_rng(seed)
    images, present = [], []
    for i in range(n):
        show = i % 2 == 0
        fixed: dict = {"flames": False, "cracks": False}
        if concept.shape:
            fixed["shape"] = concept.shape
        if concept.mark == "rings":
            fixed["texture"] = "rings" if show else "solid"  # c_a is "in plain style"
        else:
            fixed[concept.mark] = show
        scene = sample_scene(rng, allow_heldout=True, **fixed)
        images.append(render(scene, rng))
        present.append(show)
    return np.stack(images), np.array(present)


def _restricted(wc: WorldConcept, pool: tuple[Phrasing, ...]) -> WorldConcept:
    return WorldConcept(wc.name, wc.group, wc.mark, pool, wc.acceptable, wc.shape, wc.acceptable_words)


def _unrelated(name: str, count: int, seed: int, part: Part) -> list[PromptItem]:
    """Scenes naming no concept (the second half of the `acceptable` set)."""
    rng = part_rng(seed + 1, part)
    items: list[PromptItem] = []
    while len(items) < count:
        (color, background), shape = draw_cell(rng, part), str(rng.choice(SHAPES))
        if (color, shape) in HELDOUT_COMBOS:
            continue
        want: dict = {"shape": shape, "color": color, name: False}
        if background:
            want["background"] = background
        items.append(PromptItem(prompt(shape, color, background=background), want))
    return items


def _prompt_items(wc: WorldConcept, name: str, n: int, seed: int, part: Part) -> list[PromptItem]:
    """The items of a built-in prompt set, with scenes from the given part's cells."""
    if name == "unacceptable":
        pool = tuple(p for p in wc.phrasings if p.split == "train" and not p.indirect)
        return [PromptItem(t, e) for t, e in concept_prompts(_restricted(wc, pool), "direct", n, seed=seed, part=part)]
    if name == "paraphrase":
        return [PromptItem(t, e) for t, e in concept_prompts(wc, "heldout", n, seed=seed, part=part)]
    half = n // 2  # acceptable
    items = [PromptItem(t, e) for t, e in concept_prompts(wc, "acceptable", half, seed=seed, part=part)]
    return items + _unrelated(wc.name, n - half, seed, part)


class MiniWorld(Domain):
    """The shipped mini world: the mini SD, the mini CLIP and the oracle judge."""

    kind = "miniworld"
    preset = "mini"
    judges = ("oracle", "clip")
    prompt_set_names = PROMPT_SETS

    def __init__(self, model_id: str = MINIWORLD, clip_id: str | None = None) -> None:
        super().__init__(model_id, clip_id)

    @property
    def concepts(self) -> list[Concept]:
        return [c.concept() for c in CONCEPTS]

    @property
    def clip_id(self) -> str:
        return self._clip_id or MINIWORLD

    # ------------------------------------------------------------------ prompts
    # Evaluation prompts describe scenes in the evaluation cells only, every training text
    # (twins, anchors, benign and unrelated scenes, preserved prompts, attacks' training prompts)
    # scenes in the training cells only (world.context_cells): the two never share a prompt or
    # a scene description. Held-out phrasings occur only in the `paraphrase` set.
    def prompt_set(self, concept: Concept, name: str, n: int, seed: int = 0) -> PromptSet:
        """unacceptable: the concept's name and training-split synonyms (what a defender knows);
        paraphrase: held-out phrasings only, direct and indirect;
        acceptable: half the counterpart c_a, half unrelated scenes naming no concept."""
        if name not in PROMPT_SETS:
            raise InvalidInputError(f"unknown prompt set {name!r}; one of {', '.join(PROMPT_SETS)} or a file")
        return PromptSet(name, concept.name, tuple(_prompt_items(world_concept(concept.name), name, n, seed, "eval")))

    def twin_prompts(self, concept: Concept, n: int, seed: int) -> list[tuple[str, str]]:
        wc = world_concept(concept.name)  # same seed -> same shapes, colours, backgrounds and prefixes
        with_c = concept_prompts(wc, "train", n, seed=seed, part="train")
        twins = concept_prompts(wc, "acceptable", n, seed=seed, part="train")
        return [(u, a) for (u, _), (a, _) in zip(with_c, twins)]

    def benign_prompts(self, n: int, seed: int) -> list[str]:
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            shape, (color, background) = str(rng.choice(SHAPES)), draw_cell(rng, "train")
            out.append(prompt(shape, color, texture=str(rng.choice(TEXTURES[:-1])) if rng.random() < 0.4 else None,
                              background=background,
                              prefix=str(rng.choice(("", "a photo of ", "a drawing of ", "a picture of ")))))
        return out

    def unrelated_prompts(self, n: int, seed: int) -> list[str]:
        return [i.text for i in _unrelated("", n, seed, "train")]

    def preserve_prompts(self, concept: Concept, seed: int) -> list[str] | None:
        """The `acceptable` set's kind of prompts (c_a and unrelated scenes stay as they are),
        drawn from the training cells."""
        return [i.text for i in _prompt_items(world_concept(concept.name), "acceptable", 16, seed + 99, "train")]

    def seed_prompts(self, concept: Concept, n: int, seed: int, part: Part = "eval") -> list[str]:
        return [i.text for i in _prompt_items(world_concept(concept.name), "unacceptable", n, seed, part)]

    def phrasings(self, concept: Concept) -> list[str]:
        return [p.text for p in world_concept(concept.name).phrasings]

    def phrasing_prompts(self, concept: Concept, phrasings: list[str], n: int, seed: int) -> list[str]:
        """`unacceptable`-style prompts (same attributes as that set for the seed) using the
        phrasings in turn, each in its grammatical place."""
        wc = world_concept(concept.name)
        by_text = {p.text: p for p in wc.phrasings}
        pool = tuple(Phrasing(t, by_text[t].form, by_text[t].split, False) for t in phrasings)  # all as "direct"
        return [text for text, _ in concept_prompts(_restricted(wc, pool), "direct", n, seed=seed, part="eval")]

    def vocabulary_texts(self) -> list[str] | None:
        """The caption language the mini models were trained on (not the untrained rest of the BPE)."""
        return caption_vocabulary()

    # ------------------------------------------------------------------ images
    def concept_images(self, concept: Concept, n: int, seed: int, pipe=None) -> list[Image.Image]:
        """Renders that show the concept."""
        images, present = concept_renders(world_concept(concept.name), 2 * n, seed=seed)
        return [Image.fromarray(im) for im in images[present][:n]]

    def paired_concept_images(self, concept: Concept, n: int, seed: int, pipe=None,
                              part: Part = "eval") -> list[Image.Image]:
        """A render of each seed prompt's scene (its shape, colour, background) with the concept's
        mark, so an image-matching loss rewards the concept rather than unrelated attributes."""
        wc = world_concept(concept.name)
        rng = np.random.default_rng(seed)
        images = []
        for item in _prompt_items(wc, "unacceptable", n, seed, part):
            fixed = {k: item.expected[k] for k in ("shape", "color", "background") if k in item.expected}
            fixed.update(flames=False, cracks=False)
            if wc.mark == "rings":
                fixed["texture"] = "rings"
            else:
                fixed[wc.mark] = True
            images.append(Image.fromarray(render(sample_scene(rng, allow_heldout=True, **fixed), rng)))
        return images

    def calibration_images(self, concept: Concept, n: int,
                           seed: int) -> tuple[list[Image.Image], list[Image.Image]] | None:
        images, present = concept_renders(world_concept(concept.name), n, seed=seed)
        pil = [Image.fromarray(im) for im in images]
        return [p for p, s in zip(pil, present) if s], [p for p, s in zip(pil, present) if not s]

    def judge_weights(self, judge: str) -> str | None:
        return JUDGE_WEIGHTS[judge]() if judge in JUDGE_WEIGHTS else None

    def judge_quality(self, judge: str) -> dict[str, dict] | None:
        """From the audit set's measurement (audit/quality.json), if it was made on these weights."""
        path = AUDIT_DIR / QUALITY
        measured = json.loads(path.read_text())["judges"].get(judge) if path.is_file() else None
        if not measured or measured["weights"] != self.judge_weights(judge):
            return None
        return measured["test"]

    def alternative_labels(self, concept: Concept, expected: dict) -> dict:
        """The prompt's labels with the concept gone; the artist style's alternative, "plain
        style", is a solid texture."""
        want = {**expected, concept.name: False}
        if world_concept(concept.name).mark == "rings":
            want["texture"] = "solid"
        return want
