import shutil

import pytest
import torch

from conceptguard.errors import CorruptWeightsError
from conceptguard.miniworld.paths import WEIGHTS_DIR, clip_dir, pipeline_dir, verify, weight_files


def test_pipeline_and_clip_load_with_plain_library_calls():
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel, CLIPProcessor

    pipe = StableDiffusionPipeline.from_pretrained(pipeline_dir())
    images = pipe("a burning blue heart", height=32, width=32, num_inference_steps=4).images
    assert images[0].size == (32, 32)
    clip = CLIPModel.from_pretrained(clip_dir())
    proc = CLIPProcessor.from_pretrained(clip_dir())
    inputs = proc(text=["a red circle", "a blue star"], images=images, return_tensors="pt", padding=True)
    assert clip(**inputs).logits_per_image.shape == (1, 2)
    assert clip.dtype == torch.float32


def test_text_tower_is_stored_once_and_shared():
    enc = pipeline_dir() / "text_encoder" / "model.safetensors"
    assert enc.is_symlink() and enc.resolve() == (clip_dir() / "text.safetensors").resolve()


def test_shipped_weights_fit_the_budget():
    assert sum(p.stat().st_size for p in weight_files()) <= 60 * 1024 * 1024


@pytest.fixture
def weights_copy(tmp_path):
    root = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, root, symlinks=True)
    return root


def test_manifest_catches_a_flipped_byte(weights_copy):
    verify(weights_copy / "pipeline", root=weights_copy)  # intact copy passes
    target = weights_copy / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(CorruptWeightsError, match="checksum"):
        verify(weights_copy / "pipeline", root=weights_copy)


def test_manifest_checks_the_linked_text_tower(weights_copy):
    shard = weights_copy / "clip" / "text.safetensors"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptWeightsError):
        verify(weights_copy / "pipeline", root=weights_copy)


def test_truncated_weights_in_a_user_folder_are_a_clear_error(weights_copy):
    from conceptguard.models import load_pipeline

    target = weights_copy / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
    target.write_bytes(target.read_bytes()[:1000])
    with pytest.raises(CorruptWeightsError):
        load_pipeline(weights_copy / "pipeline")
