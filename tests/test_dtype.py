"""Every trained defense and every attack with the pipeline in float64 on the CPU.

A tensor created in float32 where it meets the model (noise, a one-hot, an identity matrix, a
learned token) fails here the way it fails against a float16 model on a GPU; the device
fixes of the same places (`.to(model.device, model.dtype)`) are exercised by the GPU smoke test.
Budgets are a few steps: this checks that everything runs and returns what it should, not
how well it works.
"""

import pytest
import torch

from conceptguard.attacks import AttackTarget
from conceptguard.attacks.cce import CCEAttack, CCEBudget
from conceptguard.attacks.pez import PezAttack, PezBudget
from conceptguard.attacks.ringabell import RingABell, RingABellBudget
from conceptguard.attacks.sneaky import SneakyBudget, SneakyPrompt
from conceptguard.attacks.unlearndiff import UnlearnDiffAtk, UnlearnDiffBudget
from conceptguard.defenses.allbutone import train_allbutone
from conceptguard.defenses.baselines.blocklist import KeywordBlocklist
from conceptguard.defenses.baselines.esd import train_esd
from conceptguard.defenses.baselines.uce import train_uce
from conceptguard.defenses.espresso import EspressoFilter
from conceptguard.defenses.sanitizer import SanitizerConfig, train_sanitizer
from conceptguard.defenses.steerdiff import SteerDiffConfig, train_steerdiff
from conceptguard.domains import get_concept
from conceptguard.guard import GuardedPipeline
from conceptguard.miniworld.domain import MiniWorld
from conceptguard.models import ClipEmbedder, load_pipeline

pytestmark = pytest.mark.slow

STEPS = 2  # denoising steps of the images generated here


@pytest.fixture(scope="module")
def pipe64():
    return load_pipeline(dtype=torch.float64)


@pytest.fixture(scope="module")
def concept():
    return get_concept("burning")


@pytest.fixture(scope="module")
def embedder(clip_and_processor):
    return ClipEmbedder(*clip_and_processor)  # float32 beside the float64 pipeline: dtypes meet


def _generates(guard: GuardedPipeline) -> None:
    out = guard(["a burning red heart on grass"], seed=[0], num_inference_steps=STEPS)
    assert len(out.images) == 1 and out.images[0].size == (32, 32)


def test_the_pipeline_is_float64(pipe64):
    assert pipe64.unet.dtype == torch.float64 and pipe64.text_encoder.dtype == torch.float64


@pytest.mark.parametrize("train", [
    lambda p, c: train_esd(p, c, "x", iterations=2, batch=1),
    lambda p, c: train_esd(p, c, "u", iterations=1, batch=1),
    lambda p, c: train_allbutone(p, MiniWorld(), c, iterations=2, batch=1),
    lambda p, c: train_uce(p, c, preserve=["a red heart"]),
], ids=["esd-x", "esd-u", "allbutone", "uce"])
def test_weight_edits_train_and_generate_in_float64(pipe64, concept, train):
    edit = train(pipe64, concept)
    assert edit.tensors and all(torch.isfinite(t).all() for t in edit.tensors.values())
    _generates(GuardedPipeline(pipe64, [edit]))


def test_weight_edits_train_float32_master_weights_beside_a_bfloat16_pipeline(concept):
    """Adam on bfloat16 weights loses the small updates: ESD and All but One train float32 copies,
    and the edit applies to the bfloat16 pipeline."""
    pipe16 = load_pipeline(dtype=torch.bfloat16)
    for train in (lambda: train_esd(pipe16, concept, "x", iterations=2, batch=1, lr=1e-4),
                  lambda: train_allbutone(pipe16, MiniWorld(), concept, iterations=2, batch=1, lr=1e-4)):
        edit = train()
        before = dict(pipe16.unet.named_parameters())
        moved = [(t - before[n].float()).abs().max() for n, t in edit.tensors.items()]
        # float32: trained on master weights (Adam on the bfloat16 weights themselves gives bfloat16)
        assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in edit.tensors.values())
        assert max(moved) > 0
        _generates(GuardedPipeline(pipe16, [edit]))
    assert pipe16.unet.dtype == torch.bfloat16


def test_embedding_defenses_train_and_generate_in_float64(pipe64, concept):
    domain = MiniWorld()
    sanitizer = train_sanitizer(domain, [concept], pipe64.text_encoder, pipe64.tokenizer,
                                SanitizerConfig(pairs=16, benign=16, steps=3, batch=8))
    steer = train_steerdiff(domain, [concept], pipe64.text_encoder, pipe64.tokenizer,
                            SteerDiffConfig(pairs=16, benign=16, epochs=1, batch=32))
    for defense in (sanitizer, steer):
        _generates(GuardedPipeline(pipe64, [defense]))
    assert sanitizer.explain("a burning red heart", pipe64.text_encoder, pipe64.tokenizer)


def test_image_filter_on_float64_images(pipe64, concept, embedder):
    espresso = EspressoFilter(embedder, [concept])
    _generates(GuardedPipeline(pipe64, [espresso]))


@pytest.fixture(scope="module")
def target64(pipe64, concept, embedder):
    guard = GuardedPipeline(pipe64, [KeywordBlocklist.for_concepts([concept])])
    return AttackTarget(guard, concept, MiniWorld(), "blocklist", embedder)


@pytest.mark.parametrize("attack", [
    UnlearnDiffAtk(UnlearnDiffBudget(tokens=2, procedure="swap", iterations=2, candidates=4, draws=1, t_min=100,
                                     t_max=900, init_pool=6)),
    UnlearnDiffAtk(UnlearnDiffBudget(tokens=2, procedure="swap", iterations=1, candidates=4, draws=1, t_min=100,
                                     t_max=900, init_pool=0), adaptive=True),
    UnlearnDiffAtk(UnlearnDiffBudget(tokens=2, procedure="simplex", iterations=1, timesteps=2), adaptive=True),
    CCEAttack(CCEBudget(steps=2, lr=0.02, batch=2, images=2, t_min=100, t_max=900)),
    PezAttack(PezBudget(prompt_len=4, iterations=2, images=1)),
    RingABell(RingABellBudget(length=4, population=6, generations=2, elite=2, pairs=4)),
    SneakyPrompt(SneakyBudget(queries=3, beam=2, steps=STEPS, candidates=64, pool=4)),
], ids=["unlearndiff", "unlearndiff+", "unlearndiff-simplex", "cce", "pez", "ringabell", "sneaky"])
def test_attacks_run_against_a_float64_model(target64, attack):
    result = attack.run(target64, 2, seed=0)
    assert len(result.prompts) == 2 and all(isinstance(p, str) and p for p in result.prompts)


def test_learned_token_embeddings_meet_a_half_precision_encoder(concept, embedder):
    """float32 attack embeddings into a bfloat16 text encoder (float64 would promote and hide it)."""
    pipe16 = load_pipeline(dtype=torch.bfloat16)
    target = AttackTarget(GuardedPipeline(pipe16, [KeywordBlocklist.for_concepts([concept])]), concept, MiniWorld(),
                          "blocklist", embedder)
    for attack in (UnlearnDiffAtk(UnlearnDiffBudget(tokens=2, procedure="swap", iterations=1, candidates=4, draws=1,
                                                    t_min=100, t_max=900, init_pool=0)),
                   UnlearnDiffAtk(UnlearnDiffBudget(tokens=2, procedure="simplex", iterations=1, timesteps=1)),
                   CCEAttack(CCEBudget(steps=1, lr=0.02, batch=2, images=2, t_min=100, t_max=900))):
        assert len(attack.run(target, 2, seed=0).prompts) == 2
