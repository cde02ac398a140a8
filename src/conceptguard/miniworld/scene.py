"""What a mini-world scene is made of, and how scenes are sampled.

A scene is one object on a background. Its attributes are exact labels: the renderer draws
them, the oracle learns to read them back, and the caption grammar describes them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "white")
# "rings" is the invented artist Velmora's signature style (the group-3 concept).
TEXTURES = ("solid", "striped", "dotted", "checkered", "rings")
BACKGROUNDS = ("gray", "black", "grass", "sand")
SIZES = ("small", "large")

# Visual marks that define the unacceptable concepts (see world.py for their names).
MARKS = ("flames", "cracks", "face", "eye")
FACE_SHAPE = "star"  # the character Glimmer is a star with a face
EYE_SHAPE = "circle"  # the character Zorbo is a circle with one big eye

# (color, shape) pairs never rendered for training: prompt following on them measures
# whether the mini SD composes attributes rather than memorising pairs.
HELDOUT_COMBOS = (("blue", "heart"), ("green", "star"), ("pink", "square"),
                  ("orange", "cross"), ("white", "triangle"), ("purple", "circle"))

ATTRIBUTE_HEADS = {"shape": SHAPES, "color": COLORS, "texture": TEXTURES,
                   "background": BACKGROUNDS, "size": SIZES}


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    texture: str = "solid"
    background: str = "gray"
    size: str = "large"
    flames: bool = False
    cracks: bool = False
    face: bool = False
    eye: bool = False
    # Nuisance parameters: they vary the pixels, never the labels.
    dx: float = 0.0
    dy: float = 0.0
    angle: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        for head, values in ATTRIBUTE_HEADS.items():
            if getattr(self, head) not in values:
                raise ValueError(f"unknown {head} {getattr(self, head)!r}; expected one of {values}")
        if self.face and self.shape != FACE_SHAPE:
            raise ValueError("a face is only drawn on a star (the character Glimmer)")
        if self.eye and self.shape != EYE_SHAPE:
            raise ValueError("the big eye is only drawn on a circle (the character Zorbo)")

    def labels(self) -> dict[str, str | bool]:
        d = asdict(self)
        return {k: d[k] for k in (*ATTRIBUTE_HEADS, *MARKS)}


def sample_scene(rng: np.random.Generator, allow_heldout: bool = False, **fixed) -> Scene:
    """Draw a random scene; keyword arguments pin attributes (e.g. shape="star", flames=True)."""
    while True:
        shape = fixed.get("shape") or str(rng.choice(SHAPES))
        color = fixed.get("color") or str(rng.choice(COLORS))
        if allow_heldout or (color, shape) not in HELDOUT_COMBOS or "color" in fixed and "shape" in fixed:
            break
    texture = fixed.get("texture") or str(rng.choice(TEXTURES, p=(0.36, 0.16, 0.16, 0.16, 0.16)))
    values = dict(
        shape=shape, color=color, texture=texture,
        background=fixed.get("background") or str(rng.choice(BACKGROUNDS)),
        size=fixed.get("size") or str(rng.choice(SIZES)),
        flames=fixed.get("flames", bool(rng.random() < 0.14)),
        cracks=fixed.get("cracks", bool(rng.random() < 0.14)),
        face=fixed.get("face", shape == FACE_SHAPE and bool(rng.random() < 0.4)),
        eye=fixed.get("eye", shape == EYE_SHAPE and bool(rng.random() < 0.4)),
        dx=float(rng.uniform(-0.08, 0.08)), dy=float(rng.uniform(-0.08, 0.08)),
        angle=float(rng.uniform(-20, 20)), scale=float(rng.uniform(0.92, 1.08)),
    )
    if values["flames"] and values["cracks"]:  # one group-1 concept at a time, the one asked for
        values["flames" if "cracks" in fixed and "flames" not in fixed else "cracks"] = False
    return Scene(**values)
