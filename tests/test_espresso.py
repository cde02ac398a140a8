"""Espresso: the decision rule, the certificate, fine-tuning, storage, the guard and the CLI."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conceptguard.defenses.espresso import EspressoFilter, FinetuneConfig, certified_radii, finetune, p_unacceptable
from conceptguard.domain import RealModels
from conceptguard.domains import get_concept
from conceptguard.errors import InvalidInputError
from conceptguard.miniworld.domain import MiniWorld
from conceptguard.miniworld.domain import concept_renders as concept_images
from conceptguard.miniworld.world import CONCEPT_BY_NAME
from conftest import run_cli


@pytest.fixture(scope="module")
def embedder(clip_and_processor):
    from conceptguard.models import ClipEmbedder

    return ClipEmbedder(*clip_and_processor)


def _renders(concept: str, n: int, seed: int) -> tuple[list[Image.Image], np.ndarray]:
    images, present = concept_images(CONCEPT_BY_NAME[concept], n, seed)
    return [Image.fromarray(im) for im in images], present


def _unit(v: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(v, dim=-1)


def test_softmax_matches_the_formula_and_projection_agrees_at_one_half():
    g = torch.Generator().manual_seed(0)
    x, t_u, t_a = _unit(torch.randn(200, 16, generator=g)), _unit(torch.randn(16, generator=g)), _unit(torch.randn(16, generator=g))
    p = p_unacceptable(x, t_u, t_a, 30.0)
    manual = torch.exp(30 * x @ t_u) / (torch.exp(30 * x @ t_u) + torch.exp(30 * x @ t_a))
    assert torch.allclose(p, manual, atol=1e-6)
    # both variants decide by the side of the same hyperplane at tau = 0.5
    proj = p_unacceptable(x, t_u, t_a, 30.0, mode="projection")
    assert torch.equal(p > 0.5, proj > 0.5)


@pytest.mark.parametrize("tau", [0.5, 0.8])
def test_certified_radius_is_the_distance_to_the_decision_boundary(tau):
    g = torch.Generator().manual_seed(1)
    x, t_u, t_a = _unit(torch.randn(50, 16, generator=g)), _unit(torch.randn(16, generator=g)), _unit(torch.randn(16, generator=g))
    s = 20.0
    r = certified_radii(x, t_u, t_a, s, tau)
    d = t_u - t_a
    decide = lambda z: s * (z @ d) > math.log(tau / (1 - tau))  # noqa: E731
    toward = torch.where(decide(x), -1.0, 1.0)[:, None] * d / d.norm()  # the shortest way across
    assert torch.equal(decide(x + 0.99 * r[:, None] * toward), decide(x))  # inside the radius: same decision
    assert not torch.equal(decide(x + 1.01 * r[:, None] * toward), decide(x))
    assert (decide(x + 1.01 * r[:, None] * toward) != decide(x)).all()
    for _ in range(20):  # and no perturbation shorter than r flips it, whatever its direction
        u = _unit(torch.randn(x.shape, generator=g))
        assert torch.equal(decide(x + 0.999 * r[:, None] * u), decide(x))


def test_p_u_is_clipmodels_softmax_over_the_concept_pair(embedder, clip_and_processor):
    clip, processor = clip_and_processor
    concept = get_concept("burning")
    images, _ = _renders("burning", 6, seed=4)
    inputs = processor(text=list(concept.filter_texts), images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = clip(**inputs).logits_per_image.softmax(-1)[:, 0]
    got = EspressoFilter(embedder, [concept]).scores(images)["burning"]
    assert torch.allclose(got, expected, atol=1e-5), (got, expected)


def test_grayscale_rgba_and_empty_inputs(embedder):
    f = EspressoFilter(embedder, [get_concept("burning")])
    images, _ = _renders("burning", 2, seed=5)
    rgb = f.scores(images)["burning"]
    assert torch.allclose(f.scores([im.convert("RGBA") for im in images])["burning"], rgb)  # opaque alpha: same image
    gray = f.check([im.convert("L") for im in images], ["", ""])
    assert len(gray) == 2 and all(0.0 <= d.scores["p_u_burning"] <= 1.0 for d in gray)
    assert f.check([], []) == []


def test_unfinetuned_filter_separates_renders(embedder):
    images, present = _renders("burning", 60, seed=3)
    filt = EspressoFilter(embedder, [get_concept("burning")])
    decisions = filt.check(images, [""] * len(images))
    blocked = np.array([d.blocked for d in decisions])
    assert np.mean(blocked == present) >= 0.9
    assert all("p_u_burning" in d.scores for d in decisions)


def test_several_concepts_record_each_score_and_the_reason(embedder):
    images, present = _renders("glimmer", 20, seed=4)
    filt = EspressoFilter(embedder, [get_concept("burning"), get_concept("glimmer")])
    decisions = filt.check(images, [""] * len(images))
    assert all({"p_u_burning", "p_u_glimmer"} == set(d.scores) for d in decisions)
    flagged = [d for d in decisions if d.blocked]
    assert flagged and all("glimmer" in d.reason or "burning" in d.reason for d in flagged)


def test_bad_settings_are_refused(embedder):
    with pytest.raises(InvalidInputError):
        EspressoFilter(embedder, [get_concept("burning")], tau=1.5)
    with pytest.raises(InvalidInputError):
        EspressoFilter(embedder, [get_concept("burning")], replacement="pink")
    with pytest.raises(InvalidInputError):
        EspressoFilter(embedder, [])


def test_replacements(embedder):
    image = _renders("burning", 2, seed=5)[0][0]
    black = EspressoFilter(embedder, [get_concept("burning")]).replace(image)
    assert np.asarray(black).max() == 0
    blurred = np.asarray(EspressoFilter(embedder, [get_concept("burning")], replacement="blur").replace(image))
    assert blurred.std() < np.asarray(image).std()
    given = Image.new("RGB", (8, 8), (0, 255, 0))
    out = EspressoFilter(embedder, [get_concept("burning")], replacement=given).replace(image)
    assert out.size == image.size and out.getpixel((0, 0)) == (0, 255, 0)


def test_twin_prompts_differ_only_in_the_concept():
    pairs = MiniWorld().twin_prompts(get_concept("burning"), 12, seed=0)
    for u, a in pairs:
        assert "calm" in a and "calm" not in u
        assert set(a.split()) - {"calm", "a", "an"} <= set(u.split())  # same scene words otherwise
    real = RealModels("some/real-model").twin_prompts(get_concept("nudity"), 4, seed=0)
    assert all("clean" in a for _, a in real)


def _render_generator(concept: str):
    """Stand-in for the T2I model in fast tests: renders that show the concept when the prompt is
    not the acceptable twin (the bench runs the real mini SD)."""
    wc = CONCEPT_BY_NAME[concept]

    def gen(prompts, seeds):
        out = []
        for p, s in zip(prompts, seeds):
            images, present = concept_images(wc, 2, int(s))
            out.append(Image.fromarray(images[1] if wc.acceptable.text in p else images[0]))
        return out
    return gen


def test_finetune_keeps_the_best_epoch_and_round_trips(embedder, tmp_path):
    concept = get_concept("shattered")
    before = [p.detach().clone() for p in embedder.clip.text_model.parameters()]
    result = finetune(None, MiniWorld(), embedder, concept, FinetuneConfig(pairs=20, val_pairs=10, epochs=3, batch=5, lr=1e-4),
                      generate_fn=_render_generator("shattered"))
    # the shared CLIP (whose text tower is the mini SD's text encoder) is untouched
    assert all(torch.equal(b, p) for b, p in zip(before, embedder.clip.text_model.parameters()))
    assert len(result.history) == 3 and 0 <= result.best_epoch <= 3
    chosen = result.history[result.best_epoch - 1] if result.best_epoch else result.before
    assert chosen["fnr"] + chosen["fpr"] <= result.before["fnr"] + result.before["fpr"]
    images = result.images["images"]
    result.filter.save_pretrained(tmp_path / "f")
    loaded = EspressoFilter.from_pretrained(tmp_path / "f", embedder=embedder)
    assert loaded.name == "espresso-ft"
    assert torch.allclose(loaded.scores(images)["shattered"], result.filter.scores(images)["shattered"], atol=1e-6)


def test_filter_for_another_text_encoder_is_refused(embedder, tmp_path):
    EspressoFilter(embedder, [get_concept("burning")]).save_pretrained(tmp_path / "f")
    config = json.loads((tmp_path / "f" / "config.json").read_text())
    config["hidden_size"] = 768
    (tmp_path / "f" / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInputError, match="768"):
        EspressoFilter.from_pretrained(tmp_path / "f", embedder=embedder)


def test_guard_blocks_and_replaces_flagged_images(pipe, embedder):
    from conceptguard.guard import GuardedPipeline

    filt = EspressoFilter(embedder, [get_concept("burning")], tau=0.0 + 1e-9)  # flags everything
    out = GuardedPipeline(pipe, [filt])(["a red circle"], seed=0, num_inference_steps=2)
    assert out.records[0].blocked and out.records[0].blocked_by == "espresso"
    assert np.asarray(out.images[0]).max() == 0


def test_cli_filter_and_certify(tmp_path, embedder):
    images, present = _renders("burning", 6, seed=8)
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    out = run_cli("filter", *map(str, paths), "--concept", "burning", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["rows"]
    assert [r["blocked"] for r in rows] == [bool(p) for p in present]
    EspressoFilter(embedder, [get_concept("burning")]).save_pretrained(tmp_path / "f")
    cert = run_cli("certify", "--filter", str(tmp_path / "f"), "--images", str(paths[0]), "--images", str(paths[1]),
                   "--label", "oracle", "--adversarial", str(paths[2]), "--clean", str(paths[3]),
                   "--plot", str(tmp_path / "cert.png"), "--json")
    assert cert.returncode == 0, cert.stderr
    data = json.loads(cert.stdout)
    assert data["n"] == 2 and len(data["radii"]) == 2 and data["adversarial_shift"]["mean"] > 0
    assert (tmp_path / "cert.png").stat().st_size > 0
    bad = run_cli("certify", "--filter", str(tmp_path / "nope"), "--images", str(paths[0]))
    assert bad.returncode == 2 and "filter folder not found" in bad.stderr
    corrupt, empty = tmp_path / "corrupt.png", tmp_path / "empty.png"
    corrupt.write_bytes(b"\x89PNG not really")
    empty.write_bytes(b"")
    for bad_image in (corrupt, empty):
        out = run_cli("filter", str(paths[0]), str(bad_image), "--concept", "burning")
        assert out.returncode == 2 and "cannot read image" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    unpaired = run_cli("certify", "--filter", str(tmp_path / "f"), "--images", str(paths[0]),
                       "--adversarial", str(paths[1]))
    assert unpaired.returncode == 2 and "pair them" in unpaired.stderr
