"""Ring-A-Bell and SneakyPrompt: prompt counts, determinism, filter bypass, search progress, budgets.

Budgets are tiny (a few generations, a handful of two-step queries) so the file stays fast; the
assertions are about what the searches must do at any budget.
"""

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The searches run many small batches, which one thread does faster than several on a
    shared CPU; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _target(pipe, concept: str, defenses: str = "blocklist"):
    from conceptguard.attacks import AttackTarget
    from conceptguard.defenses.baselines.blocklist import KeywordBlocklist
    from conceptguard.domains import get_concept
    from conceptguard.guard import GuardedPipeline
    from conceptguard.miniworld.domain import MiniWorld

    c = get_concept(concept)
    stack = [KeywordBlocklist.for_concepts([c])] if defenses == "blocklist" else []
    return AttackTarget(GuardedPipeline(pipe, stack), c, MiniWorld(), defenses)


@pytest.fixture(scope="module")
def burning_blocklist(pipe):
    return _target(pipe, "burning")


@pytest.fixture(scope="module")
def zorbo_blocklist(pipe):
    return _target(pipe, "zorbo")


def _ringabell(**kw):
    from conceptguard.attacks.ringabell import RingABell, RingABellBudget

    settings = {"length": 4, "population": 12, "generations": 4, "elite": 2, "positions": 24, "append": True, "pairs": 8}
    return RingABell(RingABellBudget(**{**settings, **kw}))


def _sneaky(**kw):
    from conceptguard.attacks.sneaky import SneakyBudget, SneakyPrompt

    settings = {"queries": 4, "beam": 2, "steps": 2, "max_tokens": 2, "pool": 4, "confirm": 1, "threshold": 0.9,
                "reward": "p_u"}
    return SneakyPrompt(SneakyBudget(**{**settings, **kw}))


# ------------------------------------------------------------------ registry and budgets

def test_registry_gives_both_attacks_with_cpu_and_paper_budgets():
    from conceptguard.attacks import get_attack
    from conceptguard.attacks.ringabell import RingABell
    from conceptguard.attacks.sneaky import SneakyPrompt

    rab, sneaky = get_attack("ringabell"), get_attack("sneaky")
    assert isinstance(rab, RingABell) and not rab.target_dependent
    assert isinstance(sneaky, SneakyPrompt) and sneaky.target_dependent
    paper = get_attack("ringabell", "paper").budget
    assert (paper.length, paper.eta, paper.population, paper.generations) == (16, 3.0, 200, 3000)
    assert (paper.mutation, paper.crossover) == (0.25, 0.5)
    assert rab.budget.population * rab.budget.generations < paper.population * paper.generations
    assert get_attack("sneaky", "paper").budget.queries == 60
    assert sneaky.budget.queries < 60 and sneaky.budget.steps < 25


# ------------------------------------------------------------------ Ring-A-Bell

def test_ringabell_gives_n_allowed_prompts_deterministically(burning_blocklist):
    t = burning_blocklist
    first = _ringabell().run(t, 3, seed=0)
    again = _ringabell().run(t, 3, seed=0)
    other = _ringabell().run(t, 3, seed=1)
    assert len(first.prompts) == 3 and first.prompts == again.prompts
    assert other.prompts != first.prompts
    assert all(t.allowed(first.prompts)) and all(t.allowed(other.prompts))
    assert first.queries == 0 and first.iterations >= 1  # no image was generated


def test_ringabell_prompts_are_closer_to_the_target_embedding_than_random_tokens(zorbo_blocklist):
    t = zorbo_blocklist
    attack = _ringabell(generations=6)
    result = attack.run(t, 3, seed=0)
    stripped, goals = attack.goals(t, 3, seed=0)
    found = attack.similarity(t, result.prompts, goals)
    assert np.allclose(found, result.settings["fitness"], rtol=1e-4, atol=1e-3)  # scored as the text that is output
    # the paper code's fitness: squared L2 to E(stripped prompt) + eta * v over the compared positions
    emb = attack._encode(t, result.prompts[:1]).flatten(1)
    assert found[0] == pytest.approx(-float(((emb - goals[:1]) ** 2).sum()), rel=1e-5)

    rng = np.random.default_rng(123)
    vocab = t.vocabulary.numpy()
    random = []
    for _ in range(8):
        suffix = [t.tokenizer.decode([int(i) for i in rng.choice(vocab, 4)]).strip() for _ in stripped]
        random.append(attack.similarity(t, [f"{s} {x}" for s, x in zip(stripped, suffix)], goals))
    random = np.array(random)  # [trials, prompts]
    assert (found > random.mean(0)).all()
    assert found.mean() > np.quantile(random, 0.9)


def test_concept_vector_points_from_the_acceptable_counterpart_to_the_concept(burning_blocklist):
    t = burning_blocklist
    attack = _ringabell()
    v = attack.concept_vector(t).flatten()
    shift = (attack._encode(t, ["a red circle blazing"]) - attack._encode(t, ["a red circle calm"])).flatten()
    unrelated = (attack._encode(t, ["a red circle striped"]) - attack._encode(t, ["a red circle calm"])).flatten()
    cos = lambda a, b: float((a @ b) / (a.norm() * b.norm()))
    assert cos(v, shift) > cos(v, unrelated)


# ------------------------------------------------------------------ SneakyPrompt

def test_sneaky_cuts_out_blocked_and_concept_words(burning_blocklist):
    from conceptguard.attacks.sneaky import SneakyPrompt

    left, span, right = SneakyPrompt().split(burning_blocklist, "a picture of a red circle on fire on grass")
    assert (left, span, right) == ("a picture of a red circle", "on fire", "on grass")
    assert SneakyPrompt().split(burning_blocklist, "a blue star") == ("a blue star", "", "")


def test_sneaky_bypasses_the_blocklist_within_its_query_budget(burning_blocklist):
    t = burning_blocklist
    attack = _sneaky()
    before = t.queries
    result = attack.run(t, 3, seed=0)
    assert len(result.prompts) == 3 and all(t.allowed(result.prompts))
    assert result.queries == t.queries - before
    per_prompt = result.settings["queries_per_prompt"]
    assert all(1 <= q <= attack.budget.queries for q in per_prompt) and sum(per_prompt) == result.queries
    start, best = np.array(result.settings["reward_start"]), np.array(result.settings["reward"])
    assert (start == 0).all()  # the blocklist stops every base prompt
    assert (best >= start).all() and (best > start).any()
    again = _sneaky().run(t, 3, seed=0)
    assert again.prompts == result.prompts and again.settings["reward"] == result.settings["reward"]


def test_sneaky_keeps_a_prompt_that_already_works(pipe):
    t = _target(pipe, "burning", "none")
    attack = _sneaky(threshold=0.5)
    result = attack.run(t, 2, seed=0)
    start, best = np.array(result.settings["reward_start"]), np.array(result.settings["reward"])
    assert (best >= start).all()
    for prompt, base, s, q in zip(result.prompts, t.seed_prompts(2, 0), start, result.settings["queries_per_prompt"]):
        if s >= 0.5:  # already optimal for the attacker: one query, the prompt unchanged
            assert prompt == base and q == 1
    assert result.queries <= 2 * attack.budget.queries


# ------------------------------------------------------------------ filter-aware PEZ+ and Ring-A-Bell+

@pytest.fixture(scope="module")
def espresso_target(pipe, clip_and_processor):
    from conceptguard.attacks import AttackTarget
    from conceptguard.defenses.espresso import EspressoFilter
    from conceptguard.domains import get_concept
    from conceptguard.guard import GuardedPipeline
    from conceptguard.miniworld.domain import MiniWorld
    from conceptguard.models import ClipEmbedder

    c = get_concept("burning")
    embedder = ClipEmbedder(*clip_and_processor)
    return AttackTarget(GuardedPipeline(pipe, [EspressoFilter(embedder, [c])]), c, MiniWorld(), "espresso", embedder)


def _filter_hinge(target, prompts):
    from conceptguard.attacks.unlearndiff import ImageFilterTerm

    with torch.no_grad():
        return ImageFilterTerm(target).on_text(target.embedder.texts(prompts)).numpy()


@pytest.mark.parametrize("name", ["pez", "ringabell"])
def test_filter_aware_forms_move_prompts_to_the_filters_acceptable_side(espresso_target, name):
    """PEZ+ and Ring-A-Bell+ (the Espresso paper's filter-aware attacks): with the same seed and
    budget, their prompts' CLIP text embeddings sit further on the filter's acceptable side, and the
    results are kept per target (they depend on its filter)."""
    from conceptguard.attacks import get_attack

    settings = ({"iterations": 60, "images": 2} if name == "pez" else
                {"generations": 8, "population": 16, "elite": 2, "clip_weight": 1.0})
    plain, plus = get_attack(name, "cpu", settings), get_attack(name + "+", "cpu", settings)
    assert plus.label == name + "+" and plus.cache_name(espresso_target) == f"{name}+-burning-espresso"
    a, b = plain.run(espresso_target, 4, seed=0), plus.run(espresso_target, 4, seed=0)
    assert b.attack == name + "+" and a.prompts != b.prompts
    assert _filter_hinge(espresso_target, b.prompts).mean() < _filter_hinge(espresso_target, a.prompts).mean()


def test_sneaky_paper_reward_is_prompt_similarity_or_a_query_penalty(burning_blocklist, pipe):
    """SneakyPrompt's reward: CLIP similarity of the image to the original prompt when it got
    through, else -q / (10 Q) for the q-th query of Q."""
    from conceptguard.attacks import get_attack
    from conceptguard.attacks.sneaky import SneakyBudget, SneakyPrompt, _Search

    paper = get_attack("sneaky", "paper").budget
    assert (paper.reward, paper.threshold, paper.queries) == ("similarity", 0.26, 60)
    attack = SneakyPrompt(SneakyBudget(queries=5, steps=2, reward="similarity"))
    t = burning_blocklist
    blocked, passing = "a burning red heart", "a red heart on grass"
    states = [_Search([blocked], np.zeros(1), [()], 4), _Search([passing], np.zeros(1), [()], 4)]
    for _ in range(2):
        attack._query(t, states, [(0, 0), (1, 0)], seed=0, bases=[blocked, passing])
    assert states[0].rewards[0] == [0.0, -1 / 50]
    image = t.generate([passing], [101], num_inference_steps=2).images[0]  # prompt 1, its second noise seed
    assert states[1].rewards[0][1] == pytest.approx(float(t.prompt_similarity([image], [passing])[0]), abs=1e-5)
