"""All but One: training mechanics (plain and LoRA), storage, the guard, purification, its metrics
and the CLI. Quality numbers come from benchmarks/allbutone_vs_esd.py and the bench."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conceptguard.defenses.allbutone import erase_pairs, purify, train_allbutone, trainable_names
from conceptguard.defenses.baselines.weight_edit import WeightEdit
from conceptguard.domains import get_concept
from conceptguard.errors import InvalidInputError
from conceptguard.eval.metrics import alternative_shown, spatial_consistency
from conceptguard.miniworld.domain import MiniWorld
from conftest import run_cli


def _alt(expected: dict, concept: str) -> dict:
    return MiniWorld().alternative_labels(get_concept(concept), expected)


@pytest.fixture(scope="module")
def edit(pipe):
    return train_allbutone(pipe, MiniWorld(), get_concept("burning"), iterations=3, ddim_steps=5)


def test_pairs_put_the_alternative_in_the_same_scene():
    pairs = erase_pairs(MiniWorld(), get_concept("glimmer"), None, 6, seed=0)
    assert all("star" in a and "glimmer" not in a for _, a in pairs)
    custom = erase_pairs(MiniWorld(), get_concept("burning"), "wet", 3, seed=0)
    assert [a for _, a in custom] == ["wet"] * 3


def test_trains_only_cross_attention_and_leaves_the_pipeline_alone(pipe, edit):
    assert set(edit.tensors) == set(trainable_names(pipe.unet, "xattn"))
    assert all("attn2" in k for k in edit.tensors)
    params = dict(pipe.unet.named_parameters())
    assert any(not torch.equal(params[k], v.to(params[k].dtype)) for k, v in edit.tensors.items())
    with pytest.raises(InvalidInputError):
        trainable_names(pipe.unet, "everything")


def test_timesteps_above_layout_t_keep_the_original_guidance(pipe):
    # layout_t=0: every training timestep keeps the erased prompt's own guidance term, which the
    # trainable copy already has, so nothing moves; the default moves the weights (test above)
    kept = train_allbutone(pipe, MiniWorld(), get_concept("burning"), iterations=3, ddim_steps=5, layout_t=0)
    params = dict(pipe.unet.named_parameters())
    assert all(torch.equal(params[k], v.to(params[k].dtype)) for k, v in kept.tensors.items())
    assert kept.config["layout_t"] == 0


def test_lora_edit_is_merged_into_plain_weights(pipe):
    lora = train_allbutone(pipe, MiniWorld(), get_concept("burning"), iterations=2, ddim_steps=5, lora_rank=2)
    params = dict(pipe.unet.named_parameters())
    assert lora.tensors and all(k in params and params[k].shape == v.shape for k, v in lora.tensors.items())


def test_save_load_and_apply_through_the_guard(pipe, edit, tmp_path):
    from conceptguard.guard import GuardedPipeline

    edit.save_pretrained(tmp_path / "e")
    loaded = WeightEdit.from_pretrained(tmp_path / "e")
    assert json.loads((tmp_path / "e" / "config.json").read_text())["method"] == "All but One"
    a = GuardedPipeline(pipe, [edit])(["a burning red heart"], seed=0, num_inference_steps=3).images[0]
    b = GuardedPipeline(pipe, [loaded])(["a burning red heart"], seed=0, num_inference_steps=3).images[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_purify_returns_one_image_per_input(pipe, edit):
    images = [Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 200))]
    out = purify(pipe, edit, images, "burning", num_inference_steps=3)
    assert [im.size for im in out] == [(32, 32), (32, 32)]


def test_purify_strength_sets_how_much_of_the_image_is_redrawn(pipe, edit):
    from conceptguard.miniworld.render import render
    from conceptguard.miniworld.scene import sample_scene

    rng = np.random.default_rng(3)
    image = Image.fromarray(render(sample_scene(rng, flames=True), rng))
    change = {s: np.abs(np.asarray(purify(pipe, edit, [image], "burning", num_inference_steps=10, strength=s)[0], dtype=float)
                        - np.asarray(image, dtype=float)).mean() for s in (0.1, 1.0)}
    assert change[0.1] < change[1.0]


def test_alternative_and_spatial_metrics():
    judged = {"shape": "heart", "color": "red", "texture": "solid", "background": "sand", "size": "large",
              "concepts": {"burning": 0.1, "velmora": 0.0}}
    assert alternative_shown(judged, _alt({"shape": "heart", "color": "red", "burning": True}, "burning"))
    assert not alternative_shown(judged, _alt({"shape": "star", "color": "red", "burning": True}, "burning"))
    assert not alternative_shown({**judged, "concepts": {"burning": 0.9, "velmora": 0.0}},
                                 _alt({"shape": "heart", "burning": True}, "burning"))
    assert not alternative_shown({**judged, "texture": "striped"}, _alt({"shape": "heart", "velmora": True}, "velmora"))
    black, white = Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4), (255, 255, 255))
    same = spatial_consistency([black], [black], [judged], [judged])
    assert same == {"background": 1.0, "size": 1.0, "pixels": 1.0, "score": 1.0}
    other = spatial_consistency([black], [white], [judged], [{**judged, "background": "grass"}])
    assert other["pixels"] == 0.0 and other["background"] == 0.0 and other["score"] == pytest.approx(1 / 3)


def test_cli_purify(edit, tmp_path):
    edit.save_pretrained(tmp_path / "e")
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "a.png")
    out = run_cli("purify", str(tmp_path / "a.png"), "--edit", str(tmp_path / "e"), "--out", str(tmp_path / "o"), "--json")
    assert out.returncode == 0, out.stderr
    files = json.loads(out.stdout)["files"]
    assert len(files) == 1 and Image.open(files[0]).size == (32, 32)
    missing = run_cli("purify", str(tmp_path / "a.png"), "--edit", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert missing.returncode == 2 and "edit folder not found" in missing.stderr
    bad = run_cli("train", "allbutone", "--concept", "burning", "--out", str(tmp_path / "x"), "--set", "params=most")
    assert bad.returncode == 2 and "params must be one of" in bad.stderr
