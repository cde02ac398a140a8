"""Defenses: concept removal techniques and baselines, each one of the five kinds in base.py.

Importing this package registers every defense name (`DEFENSES`) next to its class or builder.
"""

from conceptguard.defenses import allbutone, espresso, sanitizer, steerdiff  # noqa: F401  (registration)
from conceptguard.defenses.base import Decision, Defense, EmbeddingDefense, GuidanceDefense, ImageFilter, ModelEdit, PromptFilter
from conceptguard.defenses.baselines import blocklist, esd, negative_prompt, safety_checker, sld, uce  # noqa: F401
from conceptguard.defenses.registry import DEFENSES, BuildContext, DefenseStack, build_defenses, check_stack

__all__ = ["DEFENSES", "BuildContext", "Decision", "Defense", "DefenseStack", "EmbeddingDefense",
           "GuidanceDefense", "ImageFilter", "ModelEdit", "PromptFilter", "build_defenses", "check_stack"]
