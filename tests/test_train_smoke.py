"""Trains every mini model from scratch for a few steps: keeps the training code alive."""

import shutil

import numpy as np
import pytest
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
                        report=lambda stage, step, total, loss: losses.setdefault(stage, []).append(loss))
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
