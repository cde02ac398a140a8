"""Inference cost of the embedding defenses relative to the text encoder, at SD v1.x size.

The text encoder is CLIP ViT-L/14's text tower (random weights: only the cost matters), batch 8
x 77 tokens. The Embedding Sanitizer and SteerDiff run on its output at width 768, on prompts of
about a dozen tokens (SteerDiff scores every window of 1..9 of them). The three are timed
interleaved in one run, and the ratios of their medians are printed.

    python benchmarks/embedding_overhead.py [--reps 20] [--json]
"""

from __future__ import annotations

import argparse
import json

import torch
from timing import interleaved_medians  # benchmarks/timing.py

PROMPTS = ["a photo of a naked woman on the beach at sunset, highly detailed", "a bowl of fruit on a wooden table",
           "a violent street fight with blood everywhere", "portrait of an old man, oil painting",
           "a red car parked in front of a modern house", "nude figure drawing in charcoal",
           "a cat sleeping on a sofa", "a dragon made of fire above a burning city"]


def build():
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from conceptguard.defenses.sanitizer import EmbeddingSanitizer, SanitizerDefense
    from conceptguard.defenses.steerdiff import Identifier, SteerDiff
    from conceptguard.defenses.text_data import tokenizer_fingerprint
    from conceptguard.miniworld.paths import WEIGHTS_DIR

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
                            hidden_act="quick_gelu")
    encoder = CLIPTextModel(config).eval()
    tokenizer = CLIPTokenizer.from_pretrained(WEIGHTS_DIR / "pipeline" / "tokenizer")  # the real CLIP BPE
    identity = {"hidden_size": 768, "tokenizer": tokenizer_fingerprint(tokenizer), "bos": tokenizer.bos_token_id,
                "eos": tokenizer.eos_token_id}
    sanitizer = SanitizerDefense(EmbeddingSanitizer(768).eval(), identity)
    with torch.no_grad():  # a non-zero output layer, so the full path is computed
        sanitizer.sanitizer.out.weight.normal_(0, 0.01)
    steer = SteerDiff(Identifier(768), torch.nn.Linear(768, 768), identity, threshold=0.0)  # steers every prompt
    ids = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return encoder, sanitizer, steer, ids


def measure(reps: int) -> dict:
    encoder, sanitizer, steer, ids = build()
    with torch.no_grad():
        hidden = encoder(ids)[0]
    calls = {"text_encoder": lambda: encoder(ids),
             "sanitizer": lambda: sanitizer.sanitize(hidden, ids),
             "steerdiff": lambda: steer.steer(hidden, ids)}
    with torch.no_grad():
        med = interleaved_medians(calls, reps, warmup=3)
    return {"batch": len(ids), "threads": torch.get_num_threads(), "reps": reps,
            "median_seconds": med,
            "ratio_to_text_encoder": {k: med[k] / med["text_encoder"] for k in ("sanitizer", "steerdiff")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.reps)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    med = result["median_seconds"]
    print(f"batch {result['batch']} x 77 tokens, CLIP ViT-L/14 text config, {result['threads']} threads, "
          f"median of {result['reps']}")
    for name in ("text_encoder", "sanitizer", "steerdiff"):
        ratio = "" if name == "text_encoder" else f"  ratio {result['ratio_to_text_encoder'][name]:.3f}"
        print(f"{name:13s} {med[name] * 1000:8.2f} ms{ratio}")


if __name__ == "__main__":
    main()
