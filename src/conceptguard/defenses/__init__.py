"""Defenses: concept removal techniques and baselines, each one of the five kinds in base.py."""

from conceptguard.defenses.base import (Decision, Defense, EmbeddingDefense, GuidanceDefense, ImageFilter,
                                        ModelEdit, PromptFilter)

__all__ = ["Decision", "Defense", "EmbeddingDefense", "GuidanceDefense", "ImageFilter", "ModelEdit",
           "PromptFilter"]
