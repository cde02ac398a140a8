"""White-box attacks (UnlearnDiffAtk, CCE) and their adaptive "+" forms, on tiny budgets: n prompts,
determinism, prompt filters, the optimised loss, the learned token's round trip through a saved
result and the guard, and what the adaptive forms differentiate through."""

import itertools

import numpy as np
import pytest
import torch

from conceptguard.attacks import AttackResult, AttackTarget, get_attack
from conceptguard.attacks.cce import CCEAttack, CCEBudget, init_embedding
from conceptguard.attacks.unlearndiff import (
    ImageFilterTerm,
    UnlearnDiffAtk,
    UnlearnDiffBudget,
    attack_vocabulary,
    clip_image_embeds,
)
from conceptguard.defenses.baselines.blocklist import KeywordBlocklist
from conceptguard.defenses.espresso import EspressoFilter
from conceptguard.defenses.sanitizer import EmbeddingSanitizer, SanitizerDefense
from conceptguard.defenses.text_data import encoder_identity
from conceptguard.domains import get_concept
from conceptguard.guard import GuardedPipeline
from conceptguard.learned_tokens import LearnedTokens
from conceptguard.miniworld.domain import MiniWorld
from conceptguard.models import ClipEmbedder

N = 3
UD = UnlearnDiffBudget(tokens=2, procedure="swap", iterations=3, candidates=4, draws=1, t_min=100, t_max=900,
                       init_pool=6)
CCE = CCEBudget(steps=4, lr=0.02, batch=2, images=3, t_min=100, t_max=900)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Generation in these tests runs small batches, which one thread does faster on a shared CPU
    (the attacks switch to one thread themselves); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def embedder(clip_and_processor):
    return ClipEmbedder(*clip_and_processor)


@pytest.fixture(scope="module")
def concept():
    return get_concept("burning")


@pytest.fixture(scope="module")
def blocked(pipe, concept, embedder):
    return AttackTarget(GuardedPipeline(pipe, [KeywordBlocklist.for_concepts([concept])]), concept, MiniWorld(), "blocklist",
                        embedder)


@pytest.fixture(scope="module")
def sanitized(pipe, concept, embedder):
    """A sanitizer with seeded random weights: a non-trivial differentiable rewrite, no training."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = EmbeddingSanitizer(pipe.text_encoder.config.hidden_size)
        torch.nn.init.normal_(net.out.weight, std=0.2)
    defense = SanitizerDefense(net, encoder_identity(pipe.text_encoder, pipe.tokenizer, "miniworld"))
    return AttackTarget(GuardedPipeline(pipe, [defense]), concept, MiniWorld(), "sanitizer", embedder)


@pytest.fixture(scope="module")
def ud(blocked):
    return UnlearnDiffAtk(UD).run(blocked, N, seed=0)


@pytest.fixture(scope="module")
def cce(blocked):
    return CCEAttack(CCE).run(blocked, N, seed=0)


def test_registry_gives_both_forms_with_paper_and_cpu_budgets():
    plain, adaptive = get_attack("unlearndiff"), get_attack("cce+")
    assert (plain.label, plain.adaptive, adaptive.label, adaptive.adaptive) == ("unlearndiff", False, "cce+", True)
    assert plain.budget == UnlearnDiffBudget.cpu() and adaptive.budget == CCEBudget.cpu()
    paper = get_attack("unlearndiff+", "paper").budget
    assert (paper.tokens, paper.iterations) == (5, 40)
    assert get_attack("cce", "paper").budget.lr == 5e-3


def test_unlearndiff_prompts_pass_the_blocklist_and_lower_the_loss(blocked, ud):
    assert len(ud.prompts) == N and ud.attack == "unlearndiff" and ud.iterations == UD.iterations
    assert all(blocked.allowed(ud.prompts))
    words = set(attack_vocabulary(blocked)[1])
    for prompt, seed_prompt in zip(ud.prompts, blocked.seed_prompts(N, 0)):
        stripped = blocked.strip_blocked(seed_prompt)
        assert prompt.endswith(stripped)
        assert all(w in words for w in prompt[:len(prompt) - len(stripped)].split())
    losses = ud.settings["losses"]
    assert ud.settings["loss_final"] < ud.settings["loss_start"]
    assert all(b <= a for a, b in itertools.pairwise(losses))  # only swaps that lower the loss are kept


def test_unlearndiff_is_deterministic_per_seed(blocked, ud):
    again = UnlearnDiffAtk(UD).run(blocked, N, seed=0)
    assert again.prompts == ud.prompts and again.settings["losses"] == ud.settings["losses"]


def test_cce_prompts_name_only_the_learned_token(blocked, cce):
    placeholder = cce.settings["placeholder"]
    assert len(cce.prompts) == N and all(placeholder in p for p in cce.prompts)
    assert all(blocked.allowed(cce.prompts))
    assert list(cce.tokens.vectors) == [placeholder] and not any(w in placeholder for w in ("burn", "fire", "flam"))
    assert cce.settings["loss_final"] < cce.settings["loss_start"]


def test_cce_is_deterministic_per_seed(blocked, cce):
    again = CCEAttack(CCE).run(blocked, N, seed=0)
    p = cce.settings["placeholder"]
    assert again.prompts == cce.prompts and torch.equal(again.tokens.vectors[p], cce.tokens.vectors[p])


def test_cce_token_round_trips_through_a_saved_result_and_the_guard(pipe, concept, cce, tmp_path):
    cce.save(tmp_path / "r")
    loaded = AttackResult.load(tmp_path / "r")
    p = cce.settings["placeholder"]
    assert loaded.prompts == cce.prompts and torch.equal(loaded.tokens.vectors[p], cce.tokens.vectors[p])

    guard = GuardedPipeline(pipe)
    prompt = cce.prompts[0]

    def image(text, tokens=None):
        out = guard([text], seed=7, num_inference_steps=4, learned_tokens=tokens)
        return np.asarray(out.images[0], dtype=np.int16)

    init_word = image(prompt.replace(p, concept.c_a), LearnedTokens())
    at_init = image(prompt, LearnedTokens({p: init_embedding(AttackTarget(guard, concept, MiniWorld()))}))
    learned = image(prompt, loaded.tokens)
    assert np.abs(at_init - init_word).max() <= 1  # the placeholder at its start vector is the init word
    assert np.abs(learned - init_word).mean() > 1.0


def test_adaptive_forms_differentiate_through_the_sanitizer(sanitized):
    plain, adaptive = CCEAttack(CCE).run(sanitized, N, seed=0), CCEAttack(CCE, adaptive=True).run(sanitized, N, seed=0)
    assert adaptive.attack == "cce+"
    v0, v1 = (next(iter(r.tokens.vectors.values())) for r in (plain, adaptive))
    assert not torch.allclose(v0, v1)
    assert plain.settings["loss_start"] != adaptive.settings["loss_start"]  # the sanitizer is in the loss
    ud_plain = UnlearnDiffAtk(UD).run(sanitized, N, seed=0)
    ud_adaptive = UnlearnDiffAtk(UD, adaptive=True).run(sanitized, N, seed=0)
    assert ud_adaptive.settings["losses"] != ud_plain.settings["losses"]
    assert UnlearnDiffAtk(UD, adaptive=True).cache_name(sanitized) != UnlearnDiffAtk(UD).cache_name(sanitized)


def test_clip_preprocessing_is_the_embedders(blocked, embedder):
    images = blocked.concept_images(2, seed=3)
    pixels = torch.stack([torch.from_numpy(np.asarray(im, np.float32)).permute(2, 0, 1) / 127.5 - 1 for im in images])
    with torch.no_grad():
        ours = clip_image_embeds(embedder, pixels)
    assert torch.allclose(ours, embedder.images(images), atol=1e-4)


def test_image_filter_term_is_espressos_p_u_and_has_a_gradient(pipe, concept, embedder, blocked):
    espresso = EspressoFilter(embedder, [concept])
    target = AttackTarget(GuardedPipeline(pipe, [espresso]), concept, MiniWorld(), "espresso", embedder)
    term = ImageFilterTerm(target)
    images = blocked.concept_images(2, seed=1)
    pixels = torch.stack([torch.from_numpy(np.asarray(im, np.float32)).permute(2, 0, 1) / 127.5 - 1 for im in images])
    pixels.requires_grad_(True)
    loss = term(pixels)
    p_u = espresso.scores(images)[concept.name]
    hinge = torch.relu(torch.log(p_u / (1 - p_u)) + term.margin)  # tau 0.5
    assert torch.allclose(loss.detach(), hinge, atol=1e-3) and (hinge > 0).all()
    loss.sum().backward()
    assert pixels.grad.abs().sum() > 0

    plain = UnlearnDiffAtk(UD).run(target, N, seed=0)
    adaptive = UnlearnDiffAtk(UD, adaptive=True).run(target, N, seed=0)  # decodes x0 and scores it
    assert adaptive.settings["loss_start"] > plain.settings["loss_start"]


# ------------------------------------------------------------------ UnlearnDiffAtk's own procedure

def test_projection_onto_the_simplex_is_the_closest_distribution():
    from conceptguard.attacks.unlearndiff import project_to_simplex

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g) * 2
    p = project_to_simplex(x)
    assert torch.allclose(p.sum(-1), torch.ones(6), atol=1e-6) and (p >= 0).all()
    for row, proj in zip(x, p):  # no other distribution on a fine grid is closer
        trials = torch.rand(4000, 5, generator=g)
        trials = trials / trials.sum(-1, keepdim=True)
        assert (row - proj).norm() <= (row - trials).norm(dim=-1).min() + 1e-6
    assert torch.equal(project_to_simplex(torch.tensor([[0.2, 0.3, 0.5]])), torch.tensor([[0.2, 0.3, 0.5]]))


def _judged(blocked, verdict):
    return AttackTarget(blocked.guard, blocked.concept, blocked.domain, blocked.stack, blocked.embedder,
                        judge=lambda images: [verdict(i) for i in range(len(images))], sampling=(4, 7.5))


SIMPLEX = UnlearnDiffBudget(tokens=2, procedure="simplex", iterations=2, timesteps=3)


def test_unlearndiff_papers_procedure_stops_once_the_judge_sees_the_concept(blocked):
    never = UnlearnDiffAtk(SIMPLEX).run(_judged(blocked, lambda i: False), N, seed=0)
    assert never.settings["timesteps_run"] == 3 and never.iterations == 3 * 2 and not any(never.settings["succeeded"])
    assert never.queries == N + 3 * N  # the originals, then each timestep's prompts
    assert all(blocked.allowed(never.prompts)) and all(len(p.split()) >= 2 for p in never.prompts)
    assert np.isfinite(never.settings["losses"]).all()
    again = UnlearnDiffAtk(SIMPLEX).run(_judged(blocked, lambda i: False), N, seed=0)
    assert again.prompts == never.prompts  # deterministic per seed
    # a judge that says yes after the first timestep: one timestep, every prompt a success
    calls = iter([False] * N + [True] * N)
    first = UnlearnDiffAtk(SIMPLEX).run(_judged(blocked, lambda i: next(calls)), N, seed=0)
    assert first.settings["timesteps_run"] == 1 and all(first.settings["succeeded"])


def test_unlearndiff_leaves_a_prompt_that_already_succeeds_unattacked(pipe, concept, embedder):
    """The paper tries the original prompt first and counts its success without attacking it."""
    target = AttackTarget(GuardedPipeline(pipe, []), concept, MiniWorld(), "none", embedder,
                          judge=lambda images: [True] * len(images), sampling=(4, 7.5))
    result = UnlearnDiffAtk(SIMPLEX).run(target, N, seed=0)
    assert result.prompts == target.seed_prompts(N, 0) and result.settings["timesteps_run"] == 0
    assert result.queries == N
