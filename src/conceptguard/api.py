"""The Python API's conveniences: a defense stack from names in one call, for a pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conceptguard.concepts import Concept
from conceptguard.defenses import BuildContext, Defense, DefenseStack, build_defenses
from conceptguard.domain import Domain
from conceptguard.domains import get_concept, get_domain
from conceptguard.miniworld.data import cache_dir
from conceptguard.progress import Progress


def domain_of(pipe: Any, clip: str | None = None) -> Domain:
    """The domain of a loaded pipeline, from the id or folder it was loaded from."""
    return get_domain(getattr(pipe, "name_or_path", None) or getattr(pipe.config, "_name_or_path", None), clip)


def build_stack(stack: str | DefenseStack, concept: str | Concept, pipe: Any, *, clip: str | None = None,
                seed: int = 0, cache: str | Path | None = None, progress: Progress | None = None,
                **overrides: Any) -> list[Defense]:
    """The defenses of `stack` ("blocklist+espresso") for one concept, ready for GuardedPipeline.

    Trained defenses are trained on first use and cached (in `cache`, by default
    $CONCEPTGUARD_CACHE or ~/.cache/conceptguard); `overrides` set their hyper-parameters.
    """
    domain = domain_of(pipe, clip)
    ctx = BuildContext(pipe, domain, Path(cache) if cache else cache_dir(), seed, progress,
                       {k: str(v) for k, v in overrides.items()})
    return build_defenses(stack, get_concept(concept, domain), ctx)
