"""No defense or attack is trained on an evaluation prompt, nor on an evaluation prompt's scene.

The mini world splits its prompt contexts into (colour, background) cells for training text and
cells for evaluation prompts (world.context_cells). These tests check the split where it matters:
on every text each trained defense actually tokenizes while it trains, and on every source of
training text the domain gives, for several seeds, against every evaluation prompt set.
"""

from __future__ import annotations

import re

import pytest

from conceptguard.miniworld.domain import PROMPT_SETS, MiniWorld
from conceptguard.miniworld.world import BACKGROUND_WORDS, COLOR_WORDS, CONCEPTS, EVAL_CELLS, TRAIN_CELLS

SEEDS = (0, 1, 2)
EVAL_N = 48
COLOR_OF = {w: c for c, words in COLOR_WORDS.items() for w in words}
BACKGROUND_OF = {w: b for b, words in BACKGROUND_WORDS.items() for w in words}


def cell(text: str) -> tuple[str, str | None] | None:
    """The (colour, background) a prompt describes; None for text with no scene (a bare phrase)."""
    words = re.findall(r"[a-z]+", text.lower())
    colors = [COLOR_OF[w] for w in words if w in COLOR_OF]
    if not colors:
        return None
    backgrounds = [b for phrase, b in BACKGROUND_OF.items() if phrase in text.lower()]
    return colors[0], (backgrounds[0] if backgrounds else None)


def overlap(training: set[str], evaluation: set[str]) -> list[str]:
    """Training texts that are an evaluation prompt, or describe a scene cell an evaluation prompt does."""
    eval_cells = {cell(t) for t in evaluation} - {None}
    return sorted(t for t in training if t in evaluation or cell(t) in eval_cells)


def evaluation_prompts(domain: MiniWorld) -> set[str]:
    """Every prompt the bench evaluates on: the three sets and the attacks' starting prompts."""
    texts: set[str] = set()
    for c in domain.concepts:
        for seed in SEEDS:
            for name in PROMPT_SETS:
                texts.update(domain.prompt_set(c, name, EVAL_N, seed=seed).prompts)
            texts.update(domain.seed_prompts(c, EVAL_N, seed))
            texts.update(domain.phrasing_prompts(c, domain.phrasings(c), EVAL_N, seed))
    return texts


@pytest.fixture(scope="module")
def eval_texts(mini):
    return evaluation_prompts(mini)


def test_the_cells_split_every_colour_and_background_both_ways():
    assert not set(EVAL_CELLS) & set(TRAIN_CELLS)
    assert len(EVAL_CELLS) + len(TRAIN_CELLS) == len(COLOR_WORDS) * (len(BACKGROUND_WORDS) + 1)
    for cells in (EVAL_CELLS, TRAIN_CELLS):
        assert {c for c, _ in cells} == set(COLOR_WORDS)
        assert {b for _, b in cells} == {*BACKGROUND_WORDS, None}


def test_overlap_finds_a_planted_prompt_and_a_planted_scene(mini, eval_texts):
    planted = mini.prompt_set(mini.concept("burning"), "acceptable", 4, seed=1).prompts[0]
    assert overlap({planted}, eval_texts) == [planted]
    color, background = EVAL_CELLS[0]
    same_scene = f"a photo of a striped {color} star {BACKGROUND_WORDS[background][0] if background else ''}".strip()
    assert overlap({same_scene}, eval_texts) == [same_scene]  # new words, but an evaluation scene
    assert overlap({"burning", "a photo of a burning object"}, eval_texts) == []  # no scene: no context to share


@pytest.mark.parametrize("seed", SEEDS)
def test_every_source_of_training_text_is_disjoint_from_evaluation(mini, eval_texts, seed):
    training: set[str] = set()
    for k, c in enumerate(mini.concepts):
        training.update(t for pair in mini.twin_prompts(c, 400, seed + 7919 * k) for t in pair)
        training.update(mini.preserve_prompts(c, seed) or [])
        training.update(mini.seed_prompts(c, 64, seed + 1, "train"))
    training.update(mini.benign_prompts(800, seed + 1))
    training.update(mini.benign_prompts(32, seed + 3))
    training.update(mini.unrelated_prompts(8, seed + 5))
    assert len(training) > 1000
    assert overlap(training, eval_texts) == []


def test_held_out_phrasings_stay_out_of_training_text(mini):
    held = {p.text for c in CONCEPTS for p in c.phrasings if p.split == "heldout"}
    texts = [t for c in mini.concepts for pair in mini.twin_prompts(c, 400, 0) for t in pair]
    texts += mini.benign_prompts(800, 1) + [t for c in mini.concepts for t in mini.seed_prompts(c, 64, 1, "train")]
    assert not [t for t in texts for h in held if re.search(rf"\b{re.escape(h)}\b", t)]


# Each trained defense with its smallest recipe: the texts are a prefix of the full recipe's
# (the test above checks the full counts at the domain).
TINY = {"esd": {"iterations": "1", "ddim_steps": "2"}, "allbutone": {"iterations": "1", "ddim_steps": "2"},
        "espresso-ft": {"pairs": "2", "val_pairs": "1", "epochs": "1"},
        "sanitizer": {"steps": "1", "pairs": "40", "benign": "40"},
        "steerdiff": {"epochs": "1", "pairs": "40", "benign": "40"}}


def _tiny(name: str) -> dict[str, str]:
    return next((v for k, v in TINY.items() if name.startswith(k)), {})


def tokenized_while_building(pipe, domain, name: str, seed: int, cache, monkeypatch) -> tuple[set[str], bool]:
    """Every text any tokenizer sees while the defense is built (trained, since the cache is
    fresh), and whether it trained."""
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    from conceptguard.defenses.registry import BuildContext, build_defenses

    seen: set[str] = set()
    trained: list[str] = []
    call = PreTrainedTokenizerBase.__call__

    def recording(self, text=None, *args, **kwargs):
        seen.update([text] if isinstance(text, str) else list(text or []))
        return call(self, text, *args, **kwargs)

    ctx = BuildContext(pipe, domain, cache, seed, overrides=_tiny(name))
    load_or_train = ctx.load_or_train
    monkeypatch.setattr(ctx, "load_or_train", lambda method, *a, **k: trained.append(method) or load_or_train(method, *a, **k))
    with monkeypatch.context() as m:
        m.setattr(PreTrainedTokenizerBase, "__call__", recording)
        for c in domain.concepts:
            build_defenses(name, c, ctx)
    return seen, bool(trained)


@pytest.mark.slow
@pytest.mark.parametrize("seed", (0, 1))
def test_no_trained_defense_sees_an_evaluation_prompt(pipe, mini, eval_texts, seed, tmp_path, monkeypatch):
    from conceptguard.defenses.registry import DEFENSES

    trained = []
    for name in DEFENSES.names():
        if any(name.startswith(k) and name != k for k in ("sanitizer-", "steerdiff-", "sld-")):
            continue  # variants of a method share its training
        seen, did_train = tokenized_while_building(pipe, mini, name, seed, tmp_path / name, monkeypatch)
        assert overlap(seen, eval_texts) == [], name
        trained += [name] if did_train else []
    assert set(trained) >= {"allbutone", "esd-u", "esd-x", "espresso-ft", "sanitizer", "steerdiff", "uce"}


@pytest.mark.slow
def test_a_defense_fed_an_evaluation_prompt_is_caught(pipe, mini, eval_texts, tmp_path, monkeypatch):
    leaked = sorted(eval_texts)[:3]
    monkeypatch.setattr(MiniWorld, "benign_prompts", lambda self, n, seed: leaked)
    seen, _ = tokenized_while_building(pipe, mini, "sanitizer", 0, tmp_path, monkeypatch)
    assert set(overlap(seen, eval_texts)) >= set(leaked)


# Attacks learn from training text too: Ring-A-Bell's concept vector, CCE's textual inversion.
@pytest.fixture(scope="module")
def blocked_target(pipe, mini):
    from conceptguard.attacks import AttackTarget
    from conceptguard.defenses.baselines.blocklist import KeywordBlocklist
    from conceptguard.guard import GuardedPipeline

    concept = mini.concept("burning")
    return AttackTarget(GuardedPipeline(pipe, [KeywordBlocklist.for_concepts([concept])]), concept, mini, "blocklist")


def test_ring_a_bells_concept_vector_learns_from_training_text(blocked_target, eval_texts, monkeypatch):
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    from conceptguard.attacks import get_attack

    seen: set[str] = set()
    call = PreTrainedTokenizerBase.__call__
    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__",
                        lambda self, text=None, *a, **k: seen.update(text) or call(self, text, *a, **k))
    for seed in SEEDS:
        get_attack("ringabell").concept_vector(blocked_target, seed)
    assert len(seen) > 20 and overlap(seen, eval_texts) == []


def test_cce_learns_its_token_from_training_text(blocked_target, eval_texts, monkeypatch):
    from conceptguard.attacks.cce import CCEAttack, CCEBudget
    from conceptguard.learned_tokens import LearnedTokens

    seen: set[str] = set()
    tokenize = LearnedTokens.tokenize
    monkeypatch.setattr(LearnedTokens, "tokenize", lambda self, tok, texts: seen.update(texts) or tokenize(self, tok, texts))
    result = CCEAttack(CCEBudget(steps=1, lr=0.02, batch=2, images=4, t_min=100, t_max=900)).run(blocked_target, 3, seed=0)
    learned_from = seen - set(result.prompts)
    assert len(learned_from) == 4 and overlap(learned_from, eval_texts) == []


def test_real_model_training_templates_are_not_evaluation_templates():
    from conceptguard.concepts import PAPER_CONCEPTS
    from conceptguard.domain import RealModels

    real = RealModels("CompVis/stable-diffusion-v1-4", "openai/clip-vit-large-patch14")
    for c in PAPER_CONCEPTS:
        evaluation = {p for seed in SEEDS for p in [*real.seed_prompts(c, 32, seed),
                                                    *real.phrasing_prompts(c, real.phrasings(c), 32, seed)]}
        training = {p for seed in SEEDS for pair in real.twin_prompts(c, 64, seed) for p in pair}
        training |= {p for seed in SEEDS for p in [*real.benign_prompts(64, seed), *real.seed_prompts(c, 32, seed, "train")]}
        assert not training & evaluation, c.name
