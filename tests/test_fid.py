"""FID against a folder of real images: the fixed-reference Frechet distance, clean-fid's resize and
Inception call (a stand-in TorchScript model with the same interface: the real file is not
shipped), the bench's `fid_reference` end to end on the mini world's renders, and config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conceptguard.errors import ConfigError, InvalidInputError
from conceptguard.eval import metrics
from conceptguard.eval.config import load_config
from conceptguard.eval.fid import INCEPTION_SIZE, InceptionFeatures, clean_resize
from conceptguard.eval.runner import Runner
from conftest import run_cli


class FakeInception(torch.nn.Module):
    """clean-fid's TorchScript interface: (x, return_features) -> [B, 2048]; refuses other sizes."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert x.shape[1] == 3 and x.shape[2] == 299 and x.shape[3] == 299
        assert bool(return_features)
        pooled = x.mean((2, 3)) / 255.0
        return torch.cat([pooled, x.std((2, 3)) / 255.0, torch.zeros(x.shape[0], 2042)], dim=1)


@pytest.fixture(scope="module")
def fake_inception(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "inception-2015-12-05.pt"
    torch.jit.save(torch.jit.script(FakeInception()), str(path))
    return path


def test_a_fitted_reference_gives_the_same_distance_as_the_features():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 8)), rng.normal(1.0, 2.0, size=(50, 8))
    fitted = metrics.FeatureGaussian.fit(b)
    assert metrics.frechet_distance(a, fitted) == pytest.approx(metrics.frechet_distance(a, b), rel=1e-9)
    assert metrics.frechet_distance(fitted, fitted) == pytest.approx(0.0, abs=1e-9)
    assert metrics.FeatureGaussian.fit(a[:1]) is None and np.isnan(metrics.frechet_distance(a[:1], fitted))


def test_clean_resize_is_per_channel_bicubic_in_float():
    flat = Image.new("RGB", (64, 48), (10, 200, 255))
    out = clean_resize(flat)
    assert out.shape == (3, INCEPTION_SIZE, INCEPTION_SIZE) and out.dtype == np.float32
    assert np.allclose(out[:, 100, 100], [10, 200, 255], atol=1e-3)
    # a sharp edge overshoots in float bicubic: the result is clipped to the pixel range, as clean-fid's
    edge = np.zeros((32, 32, 3), np.uint8)
    edge[:, 16:] = 255
    sharp = clean_resize(Image.fromarray(edge))
    assert sharp.min() >= 0 and sharp.max() <= 255
    assert 0 < sharp[0, 150, 149] < 255  # interpolated, not nearest


def test_inception_features_call_the_torchscript_model_as_clean_fid_does(fake_inception):
    features = InceptionFeatures(fake_inception, batch_size=2)
    images = [Image.new("RGB", (40, 40), (255, 0, 0)), Image.new("L", (20, 30), 128), Image.new("RGB", (8, 8))]
    out = features(images)
    assert out.shape == (3, 2048)
    assert np.allclose(out[0, :3], [1, 0, 0], atol=1e-4) and np.allclose(out[1, :3], 128 / 255, atol=1e-4)
    assert "inception-2015-12-05.pt" in features.name


def test_a_missing_or_bad_inception_file_is_one_line(tmp_path):
    with pytest.raises(InvalidInputError, match="no file"):
        InceptionFeatures(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(InvalidInputError, match="not a TorchScript model"):
        InceptionFeatures(bad)


def _renders(tmp_path):
    """The mini world's COCO: renders (the real images) and their captions (the prompts)."""
    result = run_cli("world", "render", "--out", str(tmp_path / "real"), "--n", "12", "--seed", "3")
    assert result.returncode == 0, result.stderr
    return tmp_path / "real"


def _config(tmp_path, **fields):
    data = {**dict(defenses=["none", "blocklist"], concepts=["burning"], prompt_sets=["unacceptable", "acceptable"],
                   prompts_per_set=6, steps=4, batch_size=6, judges=["oracle", "clip"]), **fields}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("features", ["clip", "inception"])
def test_bench_reports_fid_against_real_images(tmp_path, features, fake_inception):
    real = _renders(tmp_path)
    extra = {"fid_inception": str(fake_inception)} if features == "inception" else {}
    runner = Runner(load_config(_config(tmp_path, fid_reference=str(real / "images"), fid_features=features, **extra)),
                    tmp_path / "run")
    runner.run()
    results = runner.results()
    acceptable = [r for r in results["rows"] if r["prompt_set"] == "acceptable"]
    assert {r["stack"] for r in acceptable} == {"none", "blocklist"}
    for row in acceptable:
        assert row["fid"] is not None and row["fid"] > 0
        lo, hi = row["fid_ci"]
        assert lo <= hi
    assert all(r["fid"] is None for r in results["rows"] if r["prompt_set"] != "acceptable")
    expected = "CLIP image embeddings" if features == "clip" else "Inception-v3 pool features"
    assert results["judges"]["fid"].startswith("FID vs 12 real images in ") and expected in results["judges"]["fid"]


def test_the_mini_worlds_captions_and_renders_are_a_utility_set_with_fid(tmp_path):
    """captions.csv as the `acceptable` set and the renders as its real images, through the CLI."""
    real = _renders(tmp_path)
    path = _config(tmp_path, prompt_sets=["unacceptable"], prompt_files={"acceptable": str(real / "captions.csv")},
                   fid_reference=str(real / "images"), results_doc=str(tmp_path / "RESULTS.md"))
    result = run_cli("bench", "--config", str(path), "--out", str(tmp_path / "run"), "--json")
    assert result.returncode == 0, result.stderr
    import json

    rows = [r for r in json.loads(result.stdout)["rows"] if r["prompt_set"] == "acceptable"]
    assert [r["n_images"] for r in rows] == [12, 12] and all(r["fid"] is not None for r in rows)
    assert all(r["prompt_following"] is None for r in rows)  # captions name no labels: nothing to follow
    assert "fid: FID vs 12 real images in " in (tmp_path / "run" / "results.md").read_text()
    utility = (tmp_path / "RESULTS.md").read_text().split("## Utility on `acceptable` prompts")[1]
    assert "| stack | nCLIP | FD | FID (real images) | block rate |" in utility
    assert "FID (real images): FID vs 12 real images" in utility


@pytest.mark.parametrize("fields, fragment", [
    ({"fid_reference": "nowhere"}, "fid_reference: nowhere is not a folder of images"),
    ({"fid_features": "inception"}, "fid_inception: fid_features: inception needs"),
    ({"fid_reference": ".", "prompt_sets": ["unacceptable"]}, "fid_reference: FID is measured on the `acceptable` set"),
    ({"fid_reference": ".", "fid_features": "inception", "fid_inception": "no.pt"}, "fid_inception: no file no.pt"),
])
def test_bad_fid_settings_are_one_line(tmp_path, monkeypatch, fields, fragment):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    path = _config(tmp_path, **fields)
    with pytest.raises(ConfigError, match=fragment):
        load_config(path)
