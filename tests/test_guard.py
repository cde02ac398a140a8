"""GuardedPipeline mechanics on a tiny random SD pipeline (fast; no trained weights needed)."""

import numpy as np
import pytest
import torch

from conceptguard.defenses.base import ImageFilter, PromptFilter
from conceptguard.defenses.baselines.blocklist import KeywordBlocklist
from conceptguard.defenses.baselines.negative_prompt import NegativePrompt
from conceptguard.defenses.baselines.sld import SafeLatentDiffusion
from conceptguard.defenses.baselines.uce import train_uce
from conceptguard.defenses.baselines.weight_edit import WeightEdit
from conceptguard.domains import get_concept
from conceptguard.generation import initial_latents
from conceptguard.guard import GuardedPipeline
from test_models import _tiny_sd

KW = dict(num_inference_steps=3, height=16, width=16)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from conceptguard.models import load_pipeline

    return load_pipeline(_tiny_sd(tmp_path_factory.mktemp("tiny") / "sd"))


def _px(im):
    return np.asarray(im).astype(int)


def test_no_defense_reproduces_the_diffusers_pipeline(tiny):
    out = GuardedPipeline(tiny)(["a cat", "a dog"], seed=[3, 4], **KW)
    ref = tiny(["a cat", "a dog"], latents=initial_latents(tiny, [3, 4], 16, 16), **KW).images
    assert all(np.array_equal(_px(a), _px(b)) for a, b in zip(out.images, ref))
    assert [r.seed for r in out.records] == [3, 4] and not any(r.blocked for r in out.records)


def test_prompt_filter_blocks_with_a_black_image_and_a_reason(tiny):
    guard = GuardedPipeline(tiny, [KeywordBlocklist.for_concepts([get_concept("burning")])])
    out = guard(["a burning cat", "a calm cat"], **KW)
    assert out.records[0].blocked and out.records[0].blocked_by == "blocklist"
    assert "burning" in out.records[0].reason
    assert _px(out.images[0]).max() == 0
    assert not out.records[1].blocked and _px(out.images[1]).max() > 0


class Exploding(ImageFilter):
    name = "exploding"

    def check(self, images, prompts):
        raise RuntimeError("model crashed")


class ExplodingPrompt(PromptFilter):
    name = "exploding-prompt"

    def check(self, prompts):
        raise ValueError("boom")


def test_filters_fail_closed(tiny):
    out = GuardedPipeline(tiny, [Exploding()])(["a cat", "a dog"], **KW)
    assert all(r.blocked and "model crashed" in r.reason for r in out.records)
    assert all(_px(im).max() == 0 for im in out.images)
    out = GuardedPipeline(tiny, [ExplodingPrompt()])(["a cat"], **KW)
    assert out.records[0].blocked and "boom" in out.records[0].reason


def test_embedding_and_guidance_defenses_change_the_images(tiny):
    concept = get_concept("burning")
    plain = GuardedPipeline(tiny)(["a burning cat"], seed=1, **KW).images[0]
    negative = GuardedPipeline(tiny, [NegativePrompt.for_concepts([concept])])(["a burning cat"], seed=1, **KW)
    sld = GuardedPipeline(tiny, [SafeLatentDiffusion.for_concepts([concept], "max")])(["a burning cat"], seed=1, **KW)
    assert not np.array_equal(_px(plain), _px(negative.images[0]))
    assert not np.array_equal(_px(plain), _px(sld.images[0]))
    assert [d.defense for d in negative.records[0].decisions] == ["negative-prompt"]


def test_sld_presets_are_diffusers_safety_config():
    from conceptguard.defenses.baselines.sld import PRESETS

    assert PRESETS["max"] == dict(warmup=0, scale=5000.0, threshold=1.0, momentum=0.5, beta=0.7)
    assert PRESETS["weak"]["warmup"] == 15 and PRESETS["medium"]["scale"] == 1000.0
    with pytest.raises(ValueError):
        SafeLatentDiffusion("x", "extreme")


def test_model_edit_works_on_a_copy_and_round_trips(tiny, tmp_path):
    before = {k: v.clone() for k, v in tiny.unet.state_dict().items()}
    edit = train_uce(tiny, get_concept("burning"), preserve=["a red circle"])
    edit.save_pretrained(tmp_path / "uce")
    loaded = WeightEdit.from_pretrained(tmp_path / "uce")
    assert loaded.tensors.keys() == edit.tensors.keys()
    guard = GuardedPipeline(tiny, [loaded])
    assert all(torch.equal(before[k], v) for k, v in tiny.unet.state_dict().items())
    changed = [k for k in before if not torch.equal(guard.unet.state_dict()[k], before[k])]
    assert changed and all("attn2.to_k" in k or "attn2.to_v" in k for k in changed)


def test_uce_maps_the_erased_phrase_onto_its_replacement(tiny):
    from conceptguard.defenses.baselines.uce import _phrase_embeddings

    concept = get_concept("glimmer")
    edit = train_uce(tiny, concept, lam=1e-3)
    name = next(k for k in edit.tensors if k.endswith("attn2.to_k.weight"))
    w_old = dict(tiny.unet.named_parameters())[name].detach()
    w_new = edit.tensors[name]
    old = _phrase_embeddings(tiny, [concept.train_phrasings[0]])[0]
    new = _phrase_embeddings(tiny, [concept.c_a])[0]
    n = min(len(old), len(new))
    before = (old[:n] @ w_old.T - new[:n] @ w_old.T).norm()
    after = (old[:n] @ w_new.T - new[:n] @ w_old.T).norm()
    assert after < 0.5 * before


def test_edit_for_another_model_is_refused(tiny):
    from conceptguard.errors import ConfigError

    bad = WeightEdit({"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": torch.zeros(3, 3)},
                     {"name": "uce", "base_model": "other/model"})
    with pytest.raises(ConfigError, match="other/model"):
        GuardedPipeline(tiny, [bad])


@pytest.mark.parametrize("variant", ["x", "u"])
def test_esd_trains_only_its_parameter_set(tiny, variant):
    from conceptguard.defenses.baselines.esd import train_esd

    losses = []
    edit = train_esd(tiny, get_concept("burning"), variant, iterations=2, ddim_steps=4, batch=2,
                     progress=lambda what, done, total, info="": losses.append(float(info.split()[1])))
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert edit.tensors and all(("attn2" in k) == (variant == "x") for k in edit.tensors)
    assert edit.config["concept"] == "burning" and edit.config["method"] == "ESD"


def test_trained_defense_cache_is_keyed_by_weights_and_recipe(tiny, tmp_path):
    from conceptguard.defenses.allbutone import MINI
    from conceptguard.defenses.registry import BuildContext
    from conceptguard.domain import RealModels

    ctx = BuildContext(tiny, RealModels("tiny"), tmp_path)
    folder = ctx.trained_dir("allbutone", "burning", MINI)
    assert folder == ctx.trained_dir("allbutone", "burning", dict(MINI))
    assert folder != ctx.trained_dir("allbutone", "burning", {**MINI, "layout_t": 1000})  # a changed default retrains
    assert folder != BuildContext(tiny, RealModels("other"), tmp_path).trained_dir("allbutone", "burning", MINI)
    weight = next(tiny.vae.decoder.parameters())
    with torch.no_grad():  # a new VAE decoder (Espresso's fine-tune learns from decoded images) retrains too
        weight.add_(0.01)
        try:
            assert folder != ctx.trained_dir("allbutone", "burning", MINI)
        finally:
            weight.sub_(0.01)


def test_safety_checker_threshold_is_calibrated_on_a_labelled_folder(pipe, mini, tmp_path):
    """`defense_settings: {safety-checker: {calibration: DIR}}`: the cut with the best balanced
    accuracy between DIR/present and DIR/absent; a missing folder is one line."""
    from conceptguard.defenses.baselines.safety_checker import best_threshold
    from conceptguard.defenses.registry import BuildContext, build_defenses
    from conceptguard.errors import InvalidInputError

    burning = mini.concept("burning")
    shown, not_shown = mini.calibration_images(burning, 12, seed=3)
    for name, images in (("present", shown), ("absent", not_shown)):
        (tmp_path / name).mkdir()
        for i, im in enumerate(images):
            im.save(tmp_path / name / f"{i}.png")
    ctx = BuildContext(pipe, mini, tmp_path / "cache")
    (checker,) = build_defenses("safety-checker", burning, ctx, {"safety-checker": {"calibration": str(tmp_path)}})
    sims = [checker.similarities(images)[:, 0].cpu().numpy() for images in (shown, not_shown)]
    assert checker.thresholds["burning"] == pytest.approx(best_threshold(*sims))
    (default,) = build_defenses("safety-checker", burning, ctx)  # the mini world's own renders otherwise
    assert default.thresholds["burning"] != checker.thresholds["burning"]
    with pytest.raises(InvalidInputError, match="image folder not found"):
        build_defenses("safety-checker", burning, ctx, {"safety-checker": {"calibration": str(tmp_path / "nope")}})
