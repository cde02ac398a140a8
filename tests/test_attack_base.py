"""The attack scaffold: learned tokens in prompts, the target's filter-aware helpers, results on disk."""

import pytest
import torch


@pytest.fixture(scope="module")
def blocklist_target(pipe):
    from conceptguard.attacks import AttackTarget
    from conceptguard.defenses.baselines.blocklist import KeywordBlocklist
    from conceptguard.domains import get_concept
    from conceptguard.guard import GuardedPipeline
    from conceptguard.miniworld.domain import MiniWorld

    c = get_concept("burning")
    return AttackTarget(GuardedPipeline(pipe, [KeywordBlocklist.for_concepts([c])]), c, MiniWorld(), "blocklist")


def test_learned_token_with_a_words_embedding_encodes_like_that_word(pipe):
    from conceptguard.guard import GuardedPipeline
    from conceptguard.learned_tokens import LearnedTokens

    guard = GuardedPipeline(pipe)
    red = pipe.tokenizer("red", add_special_tokens=False).input_ids[0]
    plain = guard.encode(["a photo of a red circle"])
    as_red = LearnedTokens({"<v1>": pipe.text_encoder.get_input_embeddings().weight[red]})
    assert torch.allclose(guard.encode(["a photo of a <v1> circle"], as_red), plain, atol=1e-6)
    # another vector under the same placeholder is another prompt: no stale cache hit
    zero = LearnedTokens({"<v1>": torch.zeros(pipe.text_encoder.config.hidden_size)})
    assert not torch.allclose(guard.encode(["a photo of a <v1> circle"], zero), plain, atol=1e-3)


def test_learned_tokens_reject_placeholders_that_are_not_angle_bracketed():
    from conceptguard.learned_tokens import LearnedTokens

    with pytest.raises(ValueError, match="placeholder"):
        LearnedTokens({"burning": torch.zeros(4)})


def test_encode_is_differentiable_in_token_embeddings(blocklist_target):
    ids = blocklist_target.tokenize(["a red circle"])
    embeds = blocklist_target.token_embeddings(ids).detach().requires_grad_()
    blocklist_target.encode(ids, embeds).square().sum().backward()
    assert embeds.grad is not None and embeds.grad[0, 1:4].abs().sum() > 0


def test_filter_aware_helpers_remove_what_the_blocklist_blocks(blocklist_target, pipe):
    t = blocklist_target
    stripped = t.strip_blocked("a picture of a red circle on fire")
    assert t.allowed([stripped]) == [True] and "circle" in stripped and "on fire" not in stripped
    words = {pipe.tokenizer.decode([i]).strip() for i in t.vocabulary.tolist()}
    assert "burning" not in words and "flaming" not in words
    assert {"red", "circle", "fire"} <= words  # "fire" alone is not on the blocklist ("on fire" is)


def test_attack_result_round_trips_with_its_tokens(tmp_path):
    from conceptguard.attacks import AttackResult
    from conceptguard.eval.prompt_sets import load_prompt_file
    from conceptguard.learned_tokens import LearnedTokens

    r = AttackResult("cce", "burning", "esd-x", ["a <cce-1> circle", "a <cce-1> star"], seconds=1.5, iterations=3,
                     tokens=LearnedTokens({"<cce-1>": torch.arange(4.0)}))
    r.save(tmp_path / "r")
    back = AttackResult.load(tmp_path / "r")
    assert back.prompts == r.prompts and torch.equal(back.tokens.vectors["<cce-1>"], torch.arange(4.0))
    pset = load_prompt_file(tmp_path / "r", "burning")
    assert pset.name == "adversarial-cce" and pset.items[0].expected == {"burning": True}
    assert pset.id != AttackResult("cce", "burning", "x", r.prompts).prompt_set().id  # tokens are part of the id


def test_unknown_attack_is_a_config_error(tmp_path):
    from conceptguard.attacks import get_attack
    from conceptguard.errors import ConfigError
    from conceptguard.eval.runner import load_config

    with pytest.raises(ConfigError, match="unknown attack"):
        get_attack("nope")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("attacks: [pez, nope]\n")
    with pytest.raises(ConfigError, match="attacks.*unknown attack 'nope'"):
        load_config(cfg)
