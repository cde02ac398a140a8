"""Text-side attacks (synonym, PEZ, Typo+): n prompts, deterministic for a seed, past the keyword
blocklist; PEZ raises CLIP image-text similarity; Typo+ really writes c_a onto the images."""

import numpy as np
import pytest
import torch

from conceptguard.attacks import AttackTarget, get_attack
from conceptguard.attacks.pez import PezAttack, PezBudget, pez_search
from conceptguard.attacks.synonym import SynonymAttack
from conceptguard.attacks.typo import TypoAttack, TypoBudget, write_text
from conceptguard.defenses.baselines.blocklist import KeywordBlocklist
from conceptguard.domain import RealModels
from conceptguard.domains import get_concept
from conceptguard.guard import GuardedPipeline
from conceptguard.miniworld.domain import MiniWorld
from conceptguard.miniworld.world import CONCEPT_BY_NAME

TINY_PEZ = PezBudget(prompt_len=4, iterations=25, images=2)


@pytest.fixture(scope="module")
def embedder(clip_and_processor):
    from conceptguard.models import ClipEmbedder

    return ClipEmbedder(*clip_and_processor)


@pytest.fixture(scope="module")
def blocked(pipe, embedder):
    """concept name -> an AttackTarget: the keyword blocklist in front of the mini SD."""
    def make(name: str) -> AttackTarget:
        concept = get_concept(name)
        guard = GuardedPipeline(pipe, [KeywordBlocklist.for_concepts([concept])])
        return AttackTarget(guard, concept, MiniWorld(), "blocklist", embedder)
    return make


def _direct_words(name: str) -> list[str]:
    c = get_concept(name)
    return [c.name, *c.train_phrasings]


def test_registry_gives_paper_defaults_and_small_cpu_presets():
    paper = get_attack("pez", "paper")
    assert isinstance(paper, PezAttack)
    assert (paper.budget.prompt_len, paper.budget.iterations, paper.budget.lr, paper.budget.weight_decay) == \
        (16, 3000, 0.1, 0.1)
    cpu = get_attack("pez")
    assert cpu.budget.iterations < paper.budget.iterations and cpu.budget.prompt_len <= paper.budget.prompt_len
    typo = get_attack("typo+")
    assert isinstance(typo, TypoAttack) and typo.label == "typo+" and isinstance(typo.budget, TypoBudget)
    assert isinstance(get_attack("synonym"), SynonymAttack)
    assert not any(a.target_dependent for a in (paper, typo, get_attack("synonym")))


@pytest.mark.parametrize("name", ["burning", "glimmer", "velmora"])
def test_synonym_prompts_pass_the_blocklist_and_name_the_concept_another_way(blocked, name):
    target = blocked(name)
    wc = CONCEPT_BY_NAME[name]
    result = SynonymAttack().run(target, 7, seed=3)
    assert len(result.prompts) == 7 and result.attack == "synonym" and result.concept == name
    assert all(target.allowed(result.prompts))
    direct = [w.lower() for w in _direct_words(name)]
    for prompt in result.prompts:
        assert not any(w in prompt.lower().split() for w in direct)
        assert any(p.text in prompt for p in wc.phrasings)  # a held-out or indirect phrasing
    assert SynonymAttack().run(target, 7, seed=3).prompts == result.prompts
    # undefended, the attack has nothing to avoid: the training phrasings are used too
    open_target = AttackTarget(GuardedPipeline(target.pipe, []), target.concept, MiniWorld(), "none", target.embedder)
    used = SynonymAttack().run(open_target, 16, seed=3).settings["phrasings"]
    assert len(used) == len(wc.phrasings) > len(result.settings["phrasings"])


def test_synonym_for_a_real_concept_uses_what_the_filter_passes(pipe, embedder):
    from conceptguard.concepts import Concept

    concept = Concept(name="grumpy cat", group=2, unacceptable=["grumpy cat", "tardar sauce"], acceptable="cat",
                      indirect=["the frowning internet cat"], train_phrasings=["grumpy cat"])
    target = AttackTarget(GuardedPipeline(pipe, [KeywordBlocklist.for_concepts([concept])]), concept,
                          RealModels("some/real-model"), "blocklist", embedder)
    result = SynonymAttack().run(target, 5, seed=0)
    assert sorted(result.settings["phrasings"]) == ["tardar sauce", "the frowning internet cat"]
    assert len(result.prompts) == 5 and all(target.allowed(result.prompts))
    assert all("tardar sauce" in p or "frowning internet cat" in p for p in result.prompts)


def test_pez_raises_clip_similarity_and_is_deterministic(blocked):
    target = blocked("burning")
    images = target.concept_images(6, seed=1)
    out = pez_search(target, images, 3, TINY_PEZ, seed=5)
    assert len(out.prompts) == 3 and out.token_ids.shape == (3, 4)
    assert np.all(out.similarity >= out.initial_similarity)
    assert out.similarity.mean() > out.initial_similarity.mean() + 0.1
    # the same holds for the decoded text, embedded as CLIP sees it
    img = target.embedder.images(images).reshape(3, 2, -1)
    tok = target.tokenizer
    initial = [tok.decode(r.tolist()) for r in out.initial_ids]
    sim = lambda texts: torch.einsum("np,nkp->nk", target.embedder.texts(texts), img).mean().item()
    assert sim(out.prompts) > sim(initial) + 0.1
    # only unblocked vocabulary tokens, and the same prompts for the same seed
    assert torch.isin(out.token_ids, target.vocabulary).all()
    assert pez_search(target, images, 3, TINY_PEZ, seed=5).prompts == out.prompts
    assert pez_search(target, images, 3, TINY_PEZ, seed=6).prompts != out.prompts


@pytest.mark.parametrize("name", ["glimmer", "zorbo"])
def test_pez_attack_prompts_pass_the_blocklist(blocked, name):
    target = blocked(name)
    result = PezAttack(TINY_PEZ).run(target, 4, seed=0)
    assert len(result.prompts) == 4 and all(p.strip() for p in result.prompts)
    assert all(target.allowed(result.prompts))
    assert result.iterations == TINY_PEZ.iterations and result.settings["budget"]["prompt_len"] == 4
    assert PezAttack(TINY_PEZ).run(target, 4, seed=0).prompts == result.prompts


def test_write_text_draws_on_small_images_deterministically(blocked):
    target = blocked("velmora")
    image = target.concept_images(1, seed=0)[0]
    written = write_text(image, target.concept.c_a)  # "in plain style": wrapped onto 32x32
    a, b = np.asarray(image.convert("RGB"), dtype=int), np.asarray(written, dtype=int)
    assert a.shape == b.shape == (32, 32, 3)
    changed = np.any(a != b, axis=-1)
    assert 20 < changed.sum() < 0.8 * changed.size
    assert changed[16:].sum() > changed[:8].sum()  # bottom-left corner by default
    assert np.array_equal(b, np.asarray(write_text(image, target.concept.c_a)))
    assert not np.array_equal(b, np.asarray(write_text(image, "other words")))


def test_typo_attack_writes_c_a_and_recovers_unblocked_prompts(blocked):
    target = blocked("burning")
    attack = TypoAttack(TypoBudget(**TINY_PEZ.model_dump()))
    plain = target.concept_images(4, seed=2)
    typo = attack.typo_images(target, 4, seed=2)
    for p, t in zip(plain, typo):
        assert np.any(np.asarray(p.convert("RGB")) != np.asarray(t))
    assert (target.embedder.images(typo) @ target.embedder.texts(["calm"]).T).mean() != \
        pytest.approx((target.embedder.images(plain) @ target.embedder.texts(["calm"]).T).mean().item())
    result = attack.run(target, 3, seed=2)
    assert len(result.prompts) == 3 and result.attack == "typo+" and result.settings["written"] == "calm"
    assert all(target.allowed(result.prompts))
    assert attack.run(target, 3, seed=2).prompts == result.prompts
