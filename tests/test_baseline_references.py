"""The baselines as their reference code defines them (issue: attacks and baselines as their papers
define them): UCE's retain set and preserve scale, SLD's warm-up as a share of the trajectory,
ESD-u's parameter set, Espresso's projection formula and optimizer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import pytest

from conceptguard.domains import get_concept
from conceptguard.defenses.baselines.esd import trainable_names
from conceptguard.defenses.baselines.sld import SafeLatentDiffusion
from conceptguard.defenses.baselines.uce import _full_embeddings, preserve_weight, retained_phrases, train_uce
from conceptguard.defenses.espresso import p_unacceptable


@pytest.fixture(scope="module")
def embedder(clip_and_processor):
    from conceptguard.models import ClipEmbedder

    return ClipEmbedder(*clip_and_processor)


def test_uce_preserves_the_empty_prompt_at_the_references_scale(pipe):
    assert retained_phrases(["a red circle", ""]) == ["", "a red circle"]
    assert preserve_weight(-1.0, ["", "a"]) == 0.5 and preserve_weight(-1.0, [""] * 30) == 0.1
    assert preserve_weight(1.0, ["", "a"]) == 1.0  # an explicit scale is kept
    edit = train_uce(pipe, get_concept("burning"), preserve=["a red circle", "a blue heart"])
    assert edit.config["preserve"] == ["", "a red circle", "a blue heart"]
    assert abs(edit.config["preserve_scale"] - 1 / 3) < 1e-9


def test_uce_keeps_every_token_of_a_preserved_prompt(pipe):
    """The keys of all 77 positions of a preserved prompt barely move; the erased phrase's do."""
    concept = get_concept("burning")
    edit = train_uce(pipe, concept, preserve=["a red circle"])
    name = next(n for n in edit.tensors if n.endswith("attn2.to_k.weight"))
    module = pipe.unet.get_submodule(name.removesuffix(".weight"))
    w_old, w_new = module.weight.detach().float(), edit.tensors[name].float()
    kept = _full_embeddings(pipe, ["a red circle"])[0].float()
    erased = _full_embeddings(pipe, [concept.train_phrasings[0]])[0].float()

    def change(c):
        return float((c @ (w_new - w_old).T).norm() / (c @ w_old.T).norm())

    assert change(kept) < 0.2 < change(erased)


def test_sld_warm_up_is_the_papers_share_of_the_trajectory():
    assert [SafeLatentDiffusion("x", p).warmup_steps(50) for p in ("weak", "medium", "strong", "max")] == [15, 10, 7, 0]
    assert [SafeLatentDiffusion("x", p).warmup_steps(25) for p in ("weak", "medium", "strong", "max")] == [8, 5, 4, 0]
    sld = SafeLatentDiffusion("x", "weak")
    g = torch.Generator().manual_seed(0)
    eps_u, eps_c, eps_s = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(3))
    plain = eps_u + 7.5 * (eps_c - eps_u)
    sld.reset(1, 25)
    assert torch.allclose(sld.guide(7, None, eps_u, eps_c, eps_s, 7.5), plain)  # still warming up
    assert not torch.allclose(sld.guide(8, None, eps_u, eps_c, eps_s, 7.5), plain)


def test_esd_u_trains_the_originals_noxattn_set(pipe):
    names = trainable_names(pipe.unet, "u")
    assert any("time_emb_proj" in n for n in names)  # the ResNets' timestep projections are trained
    assert not any(n.startswith(("time_embedding.", "conv_out.", "conv_norm_out.")) or "attn2" in n for n in names)
    everything = {n for n, _ in pipe.unet.named_parameters()}
    assert set(names) | set(trainable_names(pipe.unet, "x")) | {
        n for n in everything if n.startswith(("time_embedding.", "conv_out.", "conv_norm_out."))} == everything


def test_espresso_projection_mode_is_the_papers_code():
    g = torch.Generator().manual_seed(3)
    x = F.normalize(torch.randn(40, 16, generator=g), dim=-1)
    t_u, t_a = (F.normalize(torch.randn(16, generator=g), dim=-1) for _ in range(2))
    d = (t_u - t_a) / (t_u - t_a).norm()
    for i in range(3):
        projected = (d @ x[i]) * d
        dist = torch.stack([(projected - t_u).norm(), (projected - t_a).norm()])
        expected = torch.softmax(-dist, -1)[0]
        assert torch.allclose(p_unacceptable(x[i:i + 1], t_u, t_a, 100.0, "projection")[0], expected, atol=1e-6)
    # the decision at 0.5 is the softmax mode's
    assert torch.equal(p_unacceptable(x, t_u, t_a, 100.0, "projection") > 0.5, p_unacceptable(x, t_u, t_a, 100.0) > 0.5)


def test_espresso_finetunes_with_adam_and_coupled_weight_decay(monkeypatch, embedder):
    from conceptguard.defenses import espresso
    from conceptguard.miniworld.domain import MiniWorld

    made = []

    class Recording(torch.optim.Adam):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("AdamW (decoupled decay) is not the paper's optimizer")

    monkeypatch.setattr(torch.optim, "Adam", Recording)
    monkeypatch.setattr(torch.optim, "AdamW", refuse)
    cfg = espresso.FinetuneConfig(pairs=4, val_pairs=2, epochs=1, batch=2)
    espresso.finetune(None, MiniWorld(), embedder, get_concept("burning"), cfg,
                      generate_fn=lambda prompts, seeds: [_blank() for _ in prompts])
    assert made and made[0]["weight_decay"] == 0.2 and made[0]["betas"] == (0.9, 0.98)


def _blank():
    from PIL import Image

    return Image.new("RGB", (32, 32), (120, 40, 40))
