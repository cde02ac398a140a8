"""Real checkpoints go through the same loaders: exercised with tiny models built from configs."""

import pytest
import torch

from conceptguard.errors import InvalidInputError, ModelNotFoundError
from conceptguard.miniworld.paths import pipeline_dir
from conceptguard.models import load_clip, load_pipeline


def _tiny_sd(folder):
    """A StableDiffusionPipeline with random weights and SD v1.x's structure, saved to `folder`."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, vocab_size=49408, max_position_embeddings=77))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 32), norm_num_groups=8, cross_attention_dim=32,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=(8, 8), norm_num_groups=8, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, unet=unet, scheduler=DDIMScheduler(),
                                   tokenizer=CLIPTokenizer.from_pretrained(pipeline_dir() / "tokenizer"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def _tiny_clip(folder):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    torch.manual_seed(0)
    config = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, projection_dim=16),
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16),
                        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    CLIPTokenizer.from_pretrained(pipeline_dir() / "tokenizer").save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32).save_pretrained(folder)
    return folder


def test_local_sd_folder_loads_and_generates(tmp_path):
    from conceptguard.generation import generate

    pipe = load_pipeline(_tiny_sd(tmp_path / "sd"))
    images = generate(pipe, ["a photo of a cat"], [0], num_inference_steps=2, height=16, width=16)
    assert images[0].size == (16, 16)


def test_hub_id_is_found_in_the_local_cache(tmp_path, monkeypatch):
    """A hub id resolves through the Hugging Face cache layout when offline."""
    repo = tmp_path / "hub" / "models--tiny-org--tiny-sd"
    snapshot = repo / "snapshots" / ("0" * 40)
    _tiny_sd(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    pipe = load_pipeline("tiny-org/tiny-sd")
    assert pipe.unet.config.block_out_channels == [32, 32] or tuple(pipe.unet.config.block_out_channels) == (32, 32)


def test_unreachable_hub_id_is_model_not_found(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="offline"):
        load_pipeline("no-such-org/no-such-model")
    with pytest.raises(ModelNotFoundError):
        load_clip("no-such-org/no-such-clip")


def test_local_clip_folder_loads(tmp_path):
    clip, processor = load_clip(_tiny_clip(tmp_path / "clip"))
    assert clip.config.projection_dim == 16
    assert processor.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_bad_paths_are_input_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="not found"):
        load_pipeline(tmp_path / "missing" / "folder")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(InvalidInputError, match="not a model folder"):
        load_pipeline(f)
