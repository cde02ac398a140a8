"""Trains every mini model from scratch for a few steps: keeps the training code alive."""

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conceptguard.miniworld.paths import WEIGHTS_DIR


@pytest.fixture
def fresh_root(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTGUARD_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "weights"
    (root / "pipeline").mkdir(parents=True)
    shutil.copytree(WEIGHTS_DIR / "pipeline" / "tokenizer", root / "pipeline" / "tokenizer")
    return root


@pytest.mark.slow
def test_every_model_trains_exports_and_generates(fresh_root):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel

    from conceptguard.miniworld.oracle import Oracle
    from conceptguard.miniworld.train import STAGES, train_world

    losses: dict[str, list[float]] = {}
    times = train_world(seed=0, root=fresh_root, steps={s: 3 for s in STAGES}, n_train=256,
                        report=lambda stage, step, total, info: losses.setdefault(stage, []).append(float(info.split()[1])))
    assert set(times) == set(STAGES)
    assert all(len(losses[s]) == 3 and np.isfinite(losses[s]).all() for s in STAGES)
    pipe = StableDiffusionPipeline.from_pretrained(fresh_root / "pipeline")
    assert pipe("a burning blue heart", height=32, width=32, num_inference_steps=2).images[0].size == (32, 32)
    CLIPModel.from_pretrained(fresh_root / "clip")
    assert len(Oracle.from_pretrained(fresh_root / "oracle").judge(np.zeros((2, 32, 32, 3), np.uint8))) == 2


@pytest.mark.slow
def test_interrupted_training_resumes_to_the_same_weights(fresh_root, tmp_path, monkeypatch):
    from conceptguard.miniworld.train import train_world

    def interrupt_at_3(stage, step, total, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_world(seed=0, only="oracle", root=fresh_root, steps={"oracle": 4}, n_train=256,
                    checkpoint_every=2, report=interrupt_at_3)
    train_world(seed=0, only="oracle", root=fresh_root, steps={"oracle": 4}, n_train=256, checkpoint_every=2)
    resumed = load_file(fresh_root / "oracle" / "model.safetensors")

    monkeypatch.setenv("CONCEPTGUARD_CACHE", str(tmp_path / "cache2"))
    train_world(seed=0, only="oracle", root=fresh_root, steps={"oracle": 4}, n_train=256, checkpoint_every=2)
    straight = load_file(fresh_root / "oracle" / "model.safetensors")
    assert resumed.keys() == straight.keys()
    assert all(np.array_equal(resumed[k].numpy(), straight[k].numpy()) for k in resumed)


def test_checkpoint_folder_is_the_same_in_every_process():
    """Resuming needs the same folder name in a new process (diffusers configs keep a set-ordered list)."""
    import subprocess
    import sys

    code = ("from diffusers import AutoencoderKL, UNet2DConditionModel\n"
            "from conceptguard.miniworld.train import Checkpoint, DEFAULTS\n"
            "from conceptguard.miniworld.architectures import unet_config, vae_config\n"
            "print(Checkpoint('unet', 0, DEFAULTS['unet'], UNet2DConditionModel(**unet_config())).dir.name,"
            " Checkpoint('vae', 0, DEFAULTS['vae'], AutoencoderKL(**vae_config())).dir.name)")
    names = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-2]
             for _ in range(3)}
    assert len(names) == 1


def test_decoder_finetune_keeps_the_encoder_and_so_the_unets_latents(tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    from conceptguard.miniworld.architectures import vae_config
    from conceptguard.miniworld.data import render_set
    from conceptguard.miniworld.train import StageConfig, finetune_decoder

    monkeypatch.setenv("CONCEPTGUARD_CACHE", str(tmp_path / "cache"))
    images, scenes = render_set(64, seed=0, workers=1)
    torch.manual_seed(0)
    vae = AutoencoderKL(**vae_config())
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    finetune_decoder(vae, images, scenes, seed=0, cfg=StageConfig(steps=2, batch=4, lr=1e-2, warmup=1))
    after = vae.state_dict()
    encoder = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder and decoder and len(encoder) + len(decoder) == len(before)
    assert all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
    assert all(p.requires_grad for p in vae.parameters())  # handed back trainable, as it came


def test_reconstructions_from_noisy_latents_are_seeded():
    from diffusers import AutoencoderKL

    from conceptguard.miniworld.architectures import vae_config
    from conceptguard.miniworld.data import render_set
    from conceptguard.miniworld.train import reconstruct

    images, _ = render_set(8, seed=0, workers=1)
    torch.manual_seed(0)
    vae = AutoencoderKL(**vae_config()).eval()
    clean = reconstruct(vae, images)
    noisy = reconstruct(vae, images, latent_noise=0.5, seed=3)
    assert clean.shape == noisy.shape == images.shape and clean.dtype == np.uint8
    assert np.array_equal(noisy, reconstruct(vae, images, latent_noise=0.5, seed=3))
    assert not np.array_equal(noisy, clean) and not np.array_equal(noisy, reconstruct(vae, images, latent_noise=0.5, seed=4))


@pytest.mark.slow
def test_batch_workers_change_nothing(fresh_root, tmp_path, monkeypatch):
    # every batch is a function of its step alone, so building them in worker processes (as on
    # a GPU) gives the very weights an in-process run gives
    from conceptguard.miniworld.train import Device, train_world

    weights = {}
    for workers in (0, 2):
        monkeypatch.setenv("CONCEPTGUARD_CACHE", str(tmp_path / f"cache{workers}"))
        train_world(seed=0, only="vae", root=fresh_root, steps={"vae": 3, "vae_decoder": 3}, n_train=256,
                    device=Device("cpu", workers))
        weights[workers] = load_file(fresh_root / "pipeline" / "vae" / "diffusion_pytorch_model.safetensors")
    assert weights[0].keys() == weights[2].keys()
    assert all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
