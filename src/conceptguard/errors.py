"""One exception hierarchy for everything a user can get wrong.

The CLI turns any ConceptGuardError into a one-line message and exit code 2.
"""


class ConceptGuardError(Exception):
    """Root of every error conceptguard raises on purpose."""


class ModelNotFoundError(ConceptGuardError):
    """A model id or path that cannot be loaded (e.g. a hub id while offline)."""


class ConfigError(ConceptGuardError):
    """A configuration file or option that is invalid."""


class InvalidInputError(ConceptGuardError):
    """Bad user input: empty prompt, unreadable image, unknown concept, missing path."""


class UnknownConceptError(InvalidInputError):
    """A concept name that is not in the registry."""


class CorruptWeightsError(ConceptGuardError):
    """A weight file whose checksum does not match the manifest, or that cannot be parsed."""
