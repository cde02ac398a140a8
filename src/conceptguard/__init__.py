"""conceptguard: concept removal for text-to-image diffusion models."""

from conceptguard.errors import (
    ConceptGuardError,
    ConfigError,
    CorruptWeightsError,
    InvalidInputError,
    ModelNotFoundError,
    UnknownConceptError,
)

__version__ = "0.1.0"

__all__ = [
    "ConceptGuardError",
    "ConfigError",
    "CorruptWeightsError",
    "InvalidInputError",
    "ModelNotFoundError",
    "UnknownConceptError",
    "__version__",
]
