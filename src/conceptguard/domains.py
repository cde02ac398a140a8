"""Choosing the domain from a model id: the one place that tells the mini world from real models."""

from __future__ import annotations

from pathlib import Path

from conceptguard.concepts import PAPER_CONCEPTS, Concept, find_concept
from conceptguard.domain import Domain, RealModels
from conceptguard.miniworld.domain import MiniWorld
from conceptguard.miniworld.paths import MINIWORLD, pipeline_dir


def is_miniworld(model: str | Path | None) -> bool:
    """The default model, the name "miniworld", or the shipped pipeline folder itself."""
    if model is None or str(model) == MINIWORLD:
        return True
    path = Path(str(model)).expanduser()
    return path.exists() and path.resolve() == pipeline_dir().resolve()


def get_domain(model: str | Path | None = None, clip: str | None = None) -> Domain:
    """The domain of a model id or folder (the mini world by default). `clip` names the CLIP
    that CLIP-based filters, judges and attackers load (real models must name one)."""
    if is_miniworld(model):
        return MiniWorld(MINIWORLD, clip)
    return RealModels(str(model), clip)


def all_concepts() -> list[Concept]:
    """The mini world's concepts, then the paper presets for real models."""
    return MiniWorld().concepts + list(PAPER_CONCEPTS)


def get_concept(name: str | Concept, domain: Domain | None = None) -> Concept:
    """Resolve a concept name: in `domain` when given, else among every known concept."""
    if isinstance(name, Concept):
        return name
    return domain.concept(name) if domain is not None else find_concept(name, all_concepts())


__all__ = ["MINIWORLD", "Domain", "MiniWorld", "RealModels", "all_concepts", "get_concept", "get_domain",
           "is_miniworld"]
