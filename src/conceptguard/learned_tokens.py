"""Learned token embeddings (textual inversion, as in the CCE attack) in plain-text prompts.

A prompt names a learned token by a placeholder such as "<cce-3fa2>". The tokenizer is never
changed: the placeholder is tokenized as one marker token and its input embedding row is
replaced by the learned vector, so prompt filters see the text, embedding defenses see the
text encoder's output, and nothing shared (tokenizer, text encoder) is modified.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from typing import Iterator

import torch

_PLACEHOLDER = re.compile(r"<[a-z0-9][a-z0-9_-]*>")


class LearnedTokens:
    """Placeholder -> input-embedding vector [d]."""

    def __init__(self, vectors: dict[str, torch.Tensor] | None = None) -> None:
        self.vectors = {k: v.detach().float().reshape(-1).cpu() for k, v in (vectors or {}).items()}
        bad = [k for k in self.vectors if not _PLACEHOLDER.fullmatch(k)]
        if bad:
            raise ValueError(f"placeholder {bad[0]!r} must look like <name> (lower-case letters, digits, - or _)")

    def __bool__(self) -> bool:
        return bool(self.vectors)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.contiguous() for k, v in self.vectors.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "LearnedTokens":
        return cls(dict(tensors))

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for k in sorted(self.vectors):
            h.update(k.encode())
            h.update(self.vectors[k].numpy().tobytes())
        return h.hexdigest()[:10]

    def uses(self, prompt: str) -> bool:
        return any(m in self.vectors for m in _PLACEHOLDER.findall(prompt))

    def key(self, prompt: str) -> str:
        """A cache key for the prompt's embedding: the text, plus the vectors when it uses any."""
        return f"{prompt}|{self.fingerprint()}" if self.uses(prompt) else prompt

    # ------------------------------------------------------------------ tokenize and embed
    def tokenize(self, tokenizer, prompts: list[str]) -> tuple[torch.Tensor, list[list[tuple[int, str]]]]:
        """Token ids [B, max_length] with one marker token per placeholder, and where they are."""
        marker = tokenizer("*", add_special_tokens=False).input_ids[0]
        rows, where = [], []
        length = tokenizer.model_max_length
        for prompt in prompts:
            ids, spots = [tokenizer.bos_token_id], []
            for part in re.split(f"({_PLACEHOLDER.pattern})", prompt):
                if part in self.vectors:
                    spots.append((len(ids), part))
                    ids.append(marker)
                elif part.strip():
                    ids += tokenizer(part.strip(), add_special_tokens=False).input_ids
            ids = ids[:length - 1] + [tokenizer.eos_token_id]
            spots = [(i, name) for i, name in spots if i < length - 1]
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            rows.append(ids + [pad] * (length - len(ids)))
            where.append(spots)
        return torch.tensor(rows, dtype=torch.long), where

    def token_embeds(self, text_encoder, ids: torch.Tensor, where: list[list[tuple[int, str]]]) -> torch.Tensor:
        """Input embeddings for ids with the placeholders' rows replaced by the learned vectors."""
        table = text_encoder.get_input_embeddings()
        embeds = table(ids.to(table.weight.device)).clone()
        for b, spots in enumerate(where):
            for pos, name in spots:
                embeds[b, pos] = self.vectors[name].to(embeds.dtype)
        return embeds


@contextlib.contextmanager
def override_token_embeddings(text_encoder, token_embeds: torch.Tensor | None) -> Iterator[None]:
    """Within the block, the text encoder's token-embedding layer returns `token_embeds`
    (gradients flow into it); None leaves the encoder as it is."""
    if token_embeds is None:
        yield
        return
    # in the layer's own dtype and device: float32 attack embeddings meet a float16 encoder on a GPU
    handle = text_encoder.get_input_embeddings().register_forward_hook(
        lambda module, args, out: token_embeds.to(out.device, out.dtype))
    try:
        yield
    finally:
        handle.remove()
