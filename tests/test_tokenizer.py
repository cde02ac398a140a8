import gzip

from transformers import CLIPTokenizer

from conceptguard.miniworld.paths import clip_dir, pipeline_dir
from conceptguard.miniworld.tokenizer import bytes_to_unicode, convert_bpe_vocab


def test_sd_v1_token_ids():
    tok = CLIPTokenizer.from_pretrained(pipeline_dir() / "tokenizer")
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408 and tok.model_max_length == 77
    padded = tok("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == 49407  # SD v1.x pads with <|endoftext|>


def test_clip_folder_has_the_same_tokenizer():
    a = CLIPTokenizer.from_pretrained(pipeline_dir() / "tokenizer")
    b = CLIPTokenizer.from_pretrained(clip_dir())
    text = "zorbo the one-eyed ball, velmora-style, engulfed by a wildfire"
    assert a(text).input_ids == b(text).input_ids


def test_conversion_layout(tmp_path):
    merges = ["#version: 0.2", "t h", "th e</w>", "c a", "ca t</w>"]
    gz = tmp_path / "bpe.txt.gz"
    gz.write_bytes(gzip.compress("\n".join(merges).encode()))
    tok = CLIPTokenizer.from_pretrained(convert_bpe_vocab(gz, tmp_path / "tok"))
    assert len(tok) == 2 * 256 + 4 + 2
    assert tok.convert_tokens_to_ids("cat</w>") == 2 * 256 + 3
    assert tok.convert_tokens_to_ids("<|endoftext|>") == len(tok) - 1
    assert len(bytes_to_unicode()) == 256
