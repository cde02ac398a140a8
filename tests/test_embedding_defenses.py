"""Embedding Sanitizer and SteerDiff: identity at zero strength, training on the mini text encoder,
interpretability, storage, refusal of a foreign text encoder, the guard and the CLI."""

import json

import pytest
import torch

from conceptguard.defenses.sanitizer import SanitizerConfig, SanitizerDefense, train_sanitizer
from conceptguard.defenses.steerdiff import SteerDiff, SteerDiffConfig, train_steerdiff, windows
from conceptguard.defenses.text_data import align, encode
from conceptguard.domains import get_concept
from conceptguard.errors import InvalidInputError
from conceptguard.miniworld.domain import MiniWorld
from conftest import run_cli

HELD_OUT = ["a photo of a blue star ablaze", "a green circle consumed by an inferno", "a blazing yellow cross",
            "a red heart in flames on grass"]
BENIGN = ["a red heart on grass", "a calm blue star", "a striped green circle on sand", "a photo of a white cross"]


@pytest.fixture(scope="module")
def sanitizer(pipe):
    return train_sanitizer(MiniWorld(), [get_concept("burning")], pipe.text_encoder, pipe.tokenizer,
                           SanitizerConfig(pairs=200, benign=400, steps=300))


@pytest.fixture(scope="module")
def steerdiff(pipe):
    return train_steerdiff(MiniWorld(), [get_concept("burning")], pipe.text_encoder, pipe.tokenizer,
                           SteerDiffConfig(pairs=150, benign=300, epochs=5))


def test_align_maps_the_phrase_onto_the_anchor():
    mapping, phrase = align([1, 10, 11, 5, 6, 2], [1, 20, 5, 6, 2])  # BOS x y a b EOS vs BOS z a b EOS
    assert phrase == [1, 2]
    assert mapping == [0, 1, 1, 2, 3, 4]


def test_alpha_zero_is_exactly_the_undefended_embedding(pipe, sanitizer):
    hidden, ids = encode(pipe.text_encoder, pipe.tokenizer, HELD_OUT + BENIGN)
    out, _ = sanitizer.sanitize(hidden, ids, alpha=0.0)
    assert torch.equal(out, hidden)


def test_sanitizer_changes_concept_prompts_and_keeps_benign_ones(pipe, sanitizer):
    hidden, ids = encode(pipe.text_encoder, pipe.tokenizer, HELD_OUT + BENIGN)
    out, scores = sanitizer.sanitize(hidden, ids)
    change = (out - hidden).norm(dim=-1).mean(-1)
    assert change[:4].min() > 3 * change[4:].max()
    # held-out phrasings in scenes no training prompt describes: every one scores above every benign
    # prompt (at this small training budget one, "ablaze", stays near 0.45)
    concept_scores = scores[:4].max(dim=1).values
    assert concept_scores.min() > scores[4:].max() and concept_scores.mean() > 0.5 and scores[4:].max() < 0.3


def test_explain_puts_the_top_score_on_the_concept_word(pipe, sanitizer):
    rows = sanitizer.explain("a burning red heart on grass", pipe.text_encoder, pipe.tokenizer)
    assert [r["token"] for r in rows] == ["a", "burning", "red", "heart", "on", "grass"]
    assert max(rows, key=lambda r: r["score"])["token"] == "burning"


def test_explain_names_whole_words_not_bpe_pieces(pipe, sanitizer, tmp_path):
    rows = sanitizer.explain("a red heart engulfed by flames", pipe.text_encoder, pipe.tokenizer)
    assert [r["token"] for r in rows][3:5] == ["engul", "fed"]  # the mini tokenizer splits the word
    assert [r["word"] for r in rows][3:5] == ["engulfed", "engulfed"]
    assert [r["word_index"] for r in rows] == [0, 1, 2, 3, 3, 4, 5]
    sanitizer.save_pretrained(tmp_path / "s")
    out = run_cli("explain", "--sanitizer", str(tmp_path / "s"), "a red heart engulfed by flames")
    assert out.returncode == 0, out.stderr
    assert "engulfed" in out.stdout and "engul 0." in out.stdout and "harmfulness per word" in out.stdout


def test_sanitizer_round_trips_and_refuses_another_encoder(pipe, sanitizer, tmp_path):
    sanitizer.save_pretrained(tmp_path / "s")
    loaded = SanitizerDefense.from_pretrained(tmp_path / "s")
    hidden, ids = encode(pipe.text_encoder, pipe.tokenizer, HELD_OUT)
    assert torch.allclose(loaded.sanitize(hidden, ids)[0], sanitizer.sanitize(hidden, ids)[0])
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    with pytest.raises(InvalidInputError, match="width 768.*width 128"):
        SanitizerDefense(sanitizer.sanitizer, {**config, "hidden_size": 768}).check_encoder(pipe.text_encoder,
                                                                                           pipe.tokenizer)
    config.update(text_encoder="openai/clip-vit-large-patch14", tokenizer="0123456789ab")
    (tmp_path / "s" / "config.json").write_text(json.dumps(config))
    out = run_cli("explain", "--sanitizer", str(tmp_path / "s"), "a burning heart")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "openai/clip-vit-large-patch14" in out.stderr and "0123456789ab" in out.stderr


def test_guard_refuses_a_sanitizer_for_another_tokenizer(pipe, sanitizer):
    from conceptguard.guard import GuardedPipeline

    foreign = SanitizerDefense(sanitizer.sanitizer, {**sanitizer.config, "tokenizer": "0123456789ab"})
    with pytest.raises(InvalidInputError, match="0123456789ab"):
        GuardedPipeline(pipe, [foreign])


def test_windows_cover_every_span_up_to_nine_tokens():
    h = torch.arange(12 * 2, dtype=torch.float32).reshape(12, 2)
    wins, spans = windows(h, 1, 11)
    assert len(spans) == sum(min(9, 10 - i) for i in range(10))
    k = spans.index((2, 5))
    assert torch.equal(wins[k, :3], h[2:5]) and wins[k, 3:].abs().sum() == 0


def test_steerdiff_flags_concept_prompts_only(pipe, steerdiff):
    for p in HELD_OUT:
        assert steerdiff.identify(p, pipe.text_encoder, pipe.tokenizer), p
    for p in BENIGN:
        assert not steerdiff.identify(p, pipe.text_encoder, pipe.tokenizer), p


def test_steering_moves_flagged_prompts_and_leaves_others(pipe, steerdiff):
    hidden, ids = encode(pipe.text_encoder, pipe.tokenizer, HELD_OUT[:1] + BENIGN[:1])
    out, tops = steerdiff.steer(hidden, ids)
    assert torch.equal(out[1], hidden[1]) and torch.equal(out[0, 0], hidden[0, 0])  # benign and BOS untouched
    assert (out[0, 1:] - hidden[0, 1:]).norm() > 0
    assert torch.equal(steerdiff.steer(hidden, ids, eps=0.0)[0], hidden)


def test_steerdiff_round_trip_and_cli(pipe, steerdiff, tmp_path):
    steerdiff.save_pretrained(tmp_path / "d")
    loaded = SteerDiff.from_pretrained(tmp_path / "d")
    hidden, ids = encode(pipe.text_encoder, pipe.tokenizer, HELD_OUT)
    assert torch.allclose(loaded.steer(hidden, ids)[0], steerdiff.steer(hidden, ids)[0])
    out = run_cli("explain", "--steerdiff", str(tmp_path / "d"), "a blazing yellow cross", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["flagged"] is True
    prompt = "a yellow cross engulfed by flames"
    spans = loaded.identify(prompt, pipe.text_encoder, pipe.tokenizer)
    assert spans and all(s["text"] in prompt for s in spans)  # decoded words, no "engul fed"
    table = run_cli("explain", "--steerdiff", str(tmp_path / "d"), prompt)
    assert table.returncode == 0, table.stderr
    top = spans[0]
    assert f"{top['start']}-{top['end'] - 1}" in table.stdout and "both ends included" in table.stdout
    both = run_cli("explain", "a prompt")
    assert both.returncode == 2 and "exactly one" in both.stderr


def test_embedding_defenses_in_the_guard(pipe, sanitizer, steerdiff):
    from conceptguard.guard import GuardedPipeline

    prompts = ["a burning red heart", "a red heart"]
    for defense, key, expect in ((sanitizer, "max_score", None), (steerdiff, "steered", [1.0, 0.0])):
        out = GuardedPipeline(pipe, [defense])(prompts, seed=0, num_inference_steps=2)
        got = [r.decisions[0].scores[key] for r in out.records]
        assert got == expect if expect else got[0] > 0.5 > got[1]
    # stacked, SteerDiff sees the sanitized embedding, in which "burning" is gone
    out = GuardedPipeline(pipe, [sanitizer, steerdiff])(prompts[:1], seed=0, num_inference_steps=2)
    assert [d.defense for d in out.records[0].decisions] == ["sanitizer", "steerdiff"]


@pytest.mark.parametrize("spans_only", [False, True])
def test_steerdiffs_surrogate_is_the_defense_forward_and_lets_an_adaptive_attack_lower_the_score(pipe, steerdiff,
                                                                                                  spans_only):
    """The straight-through identifier: the same embeddings as the defense, and a gradient that an
    adaptive attacker follows to a prompt embedding the identifier no longer flags."""
    from conceptguard.learned_tokens import override_token_embeddings

    defense = SteerDiff(steerdiff.identifier, steerdiff.steer_map, steerdiff.config, spans_only=spans_only)
    ids = pipe.tokenizer(["a burning red heart on grass"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    table = pipe.text_encoder.get_input_embeddings()
    token_embeds = table(ids).detach().clone().requires_grad_(True)

    def encode():
        with override_token_embeddings(pipe.text_encoder, token_embeds):
            return pipe.text_encoder(ids)[0]

    def top_score() -> float:
        with torch.no_grad():
            return max(s for *_, s in defense.span_scores(encode(), ids)[0])

    with torch.no_grad():
        hidden = encode()
        assert torch.allclose(defense.differentiable(hidden, ids), defense.steer(hidden, ids)[0], atol=1e-5)
    before = top_score()
    assert before > defense.threshold
    # the adaptive attacker's aim: the UNet sees what the undefended encoder gives
    # (once unflagged the loss is 0 and the search stops moving: it ends near the threshold)
    opt = torch.optim.Adam([token_embeds], lr=0.02)
    scores = []
    for _ in range(60):
        hidden = encode()
        loss = (defense.differentiable(hidden, ids) - hidden.detach()).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        scores.append(top_score())
    assert min(scores) <= defense.threshold and scores[-1] < before - 0.3
