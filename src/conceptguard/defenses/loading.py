"""`load_defense(folder)`: any trained defense saved with `save_pretrained`, by the kind its
config names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conceptguard.defenses.base import Defense
from conceptguard.defenses.baselines.safety_checker import SafetyCheckerFilter
from conceptguard.defenses.baselines.weight_edit import WeightEdit
from conceptguard.defenses.espresso import EspressoFilter
from conceptguard.defenses.pretrained import PretrainedMixin, read_config
from conceptguard.defenses.sanitizer import SanitizerDefense
from conceptguard.defenses.steerdiff import SteerDiff
from conceptguard.errors import InvalidInputError

PRETRAINED: dict[str, type[PretrainedMixin]] = {cls.pretrained_kind: cls for cls in (
    WeightEdit, SanitizerDefense, SteerDiff, EspressoFilter, SafetyCheckerFilter)}


def load_defense(folder: str | Path, **overrides: Any) -> Defense:
    """The defense saved in `folder` (`conceptguard train ... --out folder`), with keyword
    overrides of its use-time settings (e.g. `tau=0.7` for Espresso, `alpha=0.5` for ES)."""
    kind = read_config(folder).get("kind")
    if kind not in PRETRAINED:
        raise InvalidInputError(f"{folder}: unknown defense kind {kind!r}; one of {', '.join(PRETRAINED)}")
    loaded = PRETRAINED[kind].from_pretrained(folder, **overrides)
    assert isinstance(loaded, Defense)
    return loaded
