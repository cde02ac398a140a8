"""Negative prompt: the concept's phrases replace the empty unconditional prompt.

Classifier-free guidance then pushes away from the concept instead of from "nothing".
"""

from __future__ import annotations

import torch

from conceptguard.concepts import Concept
from conceptguard.defenses.base import Decision, EmbeddingDefense
from conceptguard.defenses.registry import DEFENSES, BuildContext


@DEFENSES.register("negative-prompt")
class NegativePrompt(EmbeddingDefense):
    name = "negative-prompt"

    def __init__(self, text: str) -> None:
        if not text.strip():
            raise ValueError("empty negative prompt")
        self.text = text

    @classmethod
    def for_concepts(cls, concepts: list[Concept]) -> "NegativePrompt":
        return cls(", ".join(dict.fromkeys(p for c in concepts for p in c.train_phrasings)))

    @classmethod
    def build(cls, concept: Concept, ctx: BuildContext) -> NegativePrompt:
        return cls.for_concepts([concept])

    def apply(self, prompt_embeds: torch.Tensor, input_ids: torch.Tensor,
              prompts: list[str]) -> tuple[torch.Tensor, list[Decision]]:
        return prompt_embeds, [self.decision() for _ in prompts]

    def negative_embeds(self, uncond_embeds: torch.Tensor, encode) -> torch.Tensor:
        return encode([self.text] * uncond_embeds.shape[0])
