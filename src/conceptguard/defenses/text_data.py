"""Text-side helpers shared by the embedding defenses (Embedding Sanitizer, SteerDiff): encoding
prompts, the real-token mask, aligning a prompt with its anchor twin, and the check that a
trained defense meets the text encoder it was trained for. (The training text itself, twins
and benign prompts, comes from the domain.)"""

from __future__ import annotations

import difflib
import hashlib
import json
from typing import TYPE_CHECKING

import torch

from conceptguard.errors import InvalidInputError

if TYPE_CHECKING:  # the central handles, for type hints only
    from transformers import CLIPTextModel, CLIPTokenizer


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the vocabulary: two text encoders with the same width but other tokens differ."""
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:12]


def encoder_identity(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, name: str) -> dict:
    """What a trained embedding defense records about the text encoder it was trained for."""
    return {"text_encoder": name, "hidden_size": text_encoder.config.hidden_size,
            "tokenizer": tokenizer_fingerprint(tokenizer), "bos": tokenizer.bos_token_id,
            "eos": tokenizer.eos_token_id}


def check_encoder(what: str, config: dict, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer) -> None:
    """One-line refusal when a defense meets a text encoder other than its own."""
    mine = (config["hidden_size"], config["tokenizer"])
    theirs = (text_encoder.config.hidden_size, tokenizer_fingerprint(tokenizer))
    if mine != theirs:
        raise InvalidInputError(
            f"{what} trained for text encoder {config.get('text_encoder')} (width {mine[0]}, tokenizer {mine[1]}), "
            f"but this pipeline's has width {theirs[0]}, tokenizer {theirs[1]}")


def token_mask(input_ids: torch.Tensor, bos: int, eos: int) -> torch.Tensor:
    """1 on real prompt tokens (not BOS, EOS or the padding after EOS)."""
    after_eos = torch.cumsum((input_ids == eos).int(), dim=1) > 0
    return ((input_ids != bos) & ~after_eos).float()


def length_with_eos(ids: torch.Tensor, eos: int) -> int:
    """Tokens up to and including the first EOS."""
    return int((ids == eos).nonzero()[0, 0]) + 1


def encode(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, prompts: list[str],
           batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """last_hidden_state over all 77 positions (as SD conditions on it) and the token ids, both
    float32 on the CPU whatever the encoder's device and dtype: the small networks of ES and
    SteerDiff train there."""
    ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = torch.cat([text_encoder(ids[i:i + batch].to(text_encoder.device))[0].float().cpu()
                            for i in range(0, len(ids), batch)])
    return hidden, ids


def words_of_pieces(pieces: list[str]) -> list[tuple[int, str]]:
    """(index, text) of the whole word each BPE piece belongs to (CLIP's pieces end a word with
    "</w>"): ["a</w>", "engul", "fed</w>"] -> [(0, "a"), (1, "engulfed"), (1, "engulfed")], so
    explanations read as the prompt does."""
    words: list[tuple[int, str]] = []
    start = 0
    for i, piece in enumerate(pieces):
        if piece.endswith("</w>") or i == len(pieces) - 1:
            word = "".join(p.replace("</w>", "") for p in pieces[start:i + 1])
            index = words[-1][0] + 1 if words else 0
            words += [(index, word)] * (i + 1 - start)
            start = i + 1
    return words


def align(target_ids: list[int], anchor_ids: list[int]) -> tuple[list[int], list[int]]:
    """For each target position, the anchor position it should become, and the target positions
    that belong to the concept phrase (the tokens the anchor does not share)."""
    matcher = difflib.SequenceMatcher(a=target_ids, b=anchor_ids, autojunk=False)
    mapping = [0] * len(target_ids)
    phrase: list[int] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        for k, i in enumerate(range(i1, i2)):
            if op == "equal":
                mapping[i] = j1 + k
            else:  # phrase tokens map onto the anchor's replacement (or where it would have been)
                mapping[i] = min(j1 + k, j2 - 1) if j2 > j1 else min(j1, len(anchor_ids) - 1)
                phrase.append(i)
    return mapping, phrase


def aligned_twins(ids_t: torch.Tensor, ids_a: torch.Tensor, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per target prompt: the anchor position for each of the 77 positions (padding keeps its
    offset from EOS), and a 0/1 label on the concept-phrase tokens."""
    gather = torch.zeros(ids_t.shape, dtype=torch.long)
    labels = torch.zeros(ids_t.shape)
    for n in range(len(ids_t)):
        t_len, a_len = length_with_eos(ids_t[n], eos), length_with_eos(ids_a[n], eos)
        mapping, phrase = align(ids_t[n, :t_len].tolist(), ids_a[n, :a_len].tolist())
        pads = [min(a_len + k, ids_a.shape[1] - 1) for k in range(ids_t.shape[1] - t_len)]
        gather[n] = torch.tensor(mapping + pads)
        labels[n, phrase] = 1.0
    return gather, labels


def gather_positions(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.gather(hidden, 1, index[..., None].expand(-1, -1, hidden.shape[-1]))
