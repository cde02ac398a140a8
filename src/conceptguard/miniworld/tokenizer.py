"""The real CLIP BPE tokenizer, built once from the vocabulary that open_clip_torch ships.

OpenAI's `bpe_simple_vocab_16e6.txt.gz` holds the 48,894 merges of the CLIP tokenizer; the
vocabulary is the 256 byte symbols, the same with `</w>`, one entry per merge and the two
special tokens (49,408 in all). That is exactly the vocab.json / merges.txt pair that SD v1.x
ships, so the token ids are identical. The files are converted once and shipped with the mini
pipeline (open_clip itself is never imported: it needs torchvision).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from conceptguard.errors import ModelNotFoundError

N_MERGES = 49152 - 256 - 2
SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def find_open_clip_vocab() -> Path:
    """Locate `bpe_simple_vocab_16e6.txt.gz` inside an installed open_clip without importing it."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("open_clip_torch is not installed: `pip install --no-deps "
                                 "open_clip_torch` to get the CLIP BPE vocabulary file")
    return Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"


def convert_bpe_vocab(bpe_gz: Path, out_dir: Path) -> Path:
    """Write vocab.json + merges.txt (+ tokenizer config) for a transformers CLIPTokenizer."""
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:N_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + list(SPECIAL)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    # The same settings as SD v1.x's tokenizer_config.json (padding with <|endoftext|>).
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": SPECIAL[0],
              "eos_token": SPECIAL[1], "unk_token": SPECIAL[1], "pad_token": SPECIAL[1],
              "do_lower_case": True, "errors": "replace"}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir
