"""conceptguard: concept removal for text-to-image diffusion models.

    from conceptguard import GuardedPipeline, build_stack, get_concept, load_pipeline

    pipe = load_pipeline()  # the mini Stable Diffusion shipped in the package
    guard = GuardedPipeline(pipe, build_stack("blocklist+espresso", get_concept("burning"), pipe))
    out = guard(["a burning red heart on grass"], seed=[0])

Names are imported on first use, so `import conceptguard` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from conceptguard.errors import (
    ConceptGuardError,
    ConfigError,
    CorruptWeightsError,
    InvalidInputError,
    ModelNotFoundError,
    UnknownConceptError,
)

__version__ = "0.1.0"

_LAZY = {
    "GuardedPipeline": "conceptguard.guard", "GuardedOutput": "conceptguard.guard",
    "ImageRecord": "conceptguard.guard",
    "load_pipeline": "conceptguard.models", "load_clip": "conceptguard.models",
    "build_stack": "conceptguard.api", "domain_of": "conceptguard.api",
    "load_defense": "conceptguard.defenses.loading",
    "get_concept": "conceptguard.domains", "get_domain": "conceptguard.domains",
    "all_concepts": "conceptguard.domains",
    "Concept": "conceptguard.concepts", "Domain": "conceptguard.domain",
    "DefenseStack": "conceptguard.defenses.registry",
    "Defense": "conceptguard.defenses.base", "Decision": "conceptguard.defenses.base",
    "PromptFilter": "conceptguard.defenses.base", "ModelEdit": "conceptguard.defenses.base",
    "EmbeddingDefense": "conceptguard.defenses.base", "GuidanceDefense": "conceptguard.defenses.base",
    "ImageFilter": "conceptguard.defenses.base", "CertifiedImageFilter": "conceptguard.defenses.base",
    "get_attack": "conceptguard.attacks", "AttackTarget": "conceptguard.attacks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'conceptguard' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = ["ConceptGuardError", "ConfigError", "CorruptWeightsError", "InvalidInputError", "ModelNotFoundError",
           "UnknownConceptError", "__version__", *_LAZY]
