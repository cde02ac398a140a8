import numpy as np
import pytest

from conceptguard.miniworld.data import render_set
from conceptguard.miniworld.render import BACKGROUND_RGB, RGB, render
from conceptguard.miniworld.scene import COLORS, HELDOUT_COMBOS, Scene, sample_scene


def test_same_seed_same_pixels_and_different_seed_differs():
    a = render(sample_scene(np.random.default_rng(5)), np.random.default_rng(6))
    b = render(sample_scene(np.random.default_rng(5)), np.random.default_rng(6))
    c = render(sample_scene(np.random.default_rng(5)), np.random.default_rng(7))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_render_set_is_independent_of_chunking():
    a, sa = render_set(40, seed=3, workers=1)
    b, sb = render_set(40, seed=3, workers=2)
    assert np.array_equal(a, b) and sa == sb


def _center(img):
    return img[13:19, 13:19].reshape(-1, 3).mean(0)


@pytest.mark.parametrize("color", COLORS)
def test_object_colour_is_the_labelled_colour(color):
    img = render(Scene(shape="square", color=color, background="gray"), np.random.default_rng(0))
    centre = _center(img)
    nearest = min(RGB, key=lambda c: np.linalg.norm(np.array(RGB[c]) - centre))
    assert nearest == color


def test_background_is_the_labelled_background():
    for bg, rgb in BACKGROUND_RGB.items():
        img = render(Scene(shape="circle", color="red", background=bg, size="small"), np.random.default_rng(0))
        corner = img[:3, :3].reshape(-1, 3).mean(0)
        assert np.linalg.norm(corner - np.array(rgb)) < 30, bg


def test_marks_change_pixels_where_expected():
    rng = lambda: np.random.default_rng(1)  # noqa: E731
    plain = render(Scene(shape="star", color="blue"), rng())
    burning = render(Scene(shape="star", color="blue", flames=True), rng())
    # flames: bright yellow/orange pixels appear, which a blue star on gray has none of
    flame_px = lambda im: np.sum((im[..., 0] > 200) & (im[..., 1] > 120) & (im[..., 2] < 110))  # noqa: E731
    assert flame_px(plain) == 0 and flame_px(burning) > 10
    cracked = render(Scene(shape="square", color="yellow", cracks=True), rng())
    intact = render(Scene(shape="square", color="yellow"), rng())
    dark = lambda im: np.sum(im[8:24, 8:24].max(-1) < 90)  # noqa: E731
    assert dark(intact) == 0 and dark(cracked) > 5
    face = render(Scene(shape="star", color="yellow", face=True), rng())
    assert dark(face) > dark(render(Scene(shape="star", color="yellow"), rng()))
    eye = render(Scene(shape="circle", color="red", eye=True), rng())
    assert eye[15:17, 15:17].max() < 90  # the pupil sits in the middle


def test_striped_texture_varies_and_solid_does_not():
    solid = render(Scene(shape="square", color="green", texture="solid"), np.random.default_rng(0))
    striped = render(Scene(shape="square", color="green", texture="striped"), np.random.default_rng(0))
    assert solid[10:22, 10:22].std(axis=(0, 1)).mean() < 8 < striped[10:22, 10:22].std(axis=(0, 1)).mean()


def test_invalid_scenes_are_refused():
    with pytest.raises(ValueError):
        Scene(shape="hexagon", color="red")
    with pytest.raises(ValueError):
        Scene(shape="heart", color="red", face=True)  # faces belong to the star character


def test_training_scenes_skip_heldout_combos():
    rng = np.random.default_rng(0)
    pairs = {(s.color, s.shape) for s in (sample_scene(rng) for _ in range(2000))}
    assert not pairs & set(HELDOUT_COMBOS)
    assert len(pairs) == 48 - len(HELDOUT_COMBOS)


def test_the_oracles_training_set_has_every_combo(tmp_path, monkeypatch):
    """The judge is trained on the held-out combinations too: it judges the generator on them."""
    from conceptguard.miniworld.data import cached_render_set

    monkeypatch.setenv("CONCEPTGUARD_CACHE", str(tmp_path))
    _, generator_scenes = cached_render_set(600, seed=0)
    _, judge_scenes = cached_render_set(600, seed=0, allow_heldout=True)
    assert not {(s.color, s.shape) for s in generator_scenes} & set(HELDOUT_COMBOS)
    assert {(s.color, s.shape) for s in judge_scenes} & set(HELDOUT_COMBOS)
