"""Configurations of the mini models: the same library classes as Stable Diffusion, tiny sizes."""

from __future__ import annotations

import torch
from torch import nn

from conceptguard.miniworld.render import IMAGE_SIZE
from conceptguard.miniworld.scene import ATTRIBUTE_HEADS, MARKS

TEXT_HIDDEN = 128
MAX_TOKENS = 77
VOCAB_SIZE = 49408
LATENT_CHANNELS = 8


def clip_config():
    from transformers import CLIPConfig

    text = dict(vocab_size=VOCAB_SIZE, hidden_size=TEXT_HIDDEN, intermediate_size=4 * TEXT_HIDDEN,
                num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
                projection_dim=128, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                hidden_act="quick_gelu")
    vision = dict(image_size=IMAGE_SIZE, patch_size=4, hidden_size=128, intermediate_size=512,
                  num_hidden_layers=4, num_attention_heads=4, projection_dim=128,
                  hidden_act="quick_gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=128,
                      logit_scale_init_value=2.6592)


def vae_config() -> dict:
    # 8 latent channels (SD v1.x has 4): at 32x32, 4 channels lose the textures and marks the
    # concepts are drawn with; 8 keep them within the training budget (SD3 went to 16).
    return dict(in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, sample_size=IMAGE_SIZE,
                down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3,
                block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16)


def unet_config() -> dict:
    return dict(sample_size=IMAGE_SIZE // 4, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
                layers_per_block=1,
                block_out_channels=(64, 128),
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=TEXT_HIDDEN, attention_head_dim=4, norm_num_groups=16)


def scheduler_config() -> dict:
    # SD v1.x's conventions, so published hyper-parameters stay meaningful.
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                steps_offset=1, prediction_type="epsilon")


ORACLE_HEADS: dict[str, int] = {**{k: len(v) for k, v in ATTRIBUTE_HEADS.items()}, "marks": len(MARKS)}


class OracleNet(nn.Module):
    """A small CNN with one head per attribute and a multi-label head for the concept marks."""

    def __init__(self, width: int = 48) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())

        w = width
        self.features = nn.Sequential(block(3, w, 1), block(w, w, 1), block(w, 2 * w, 2),
                                      block(2 * w, 2 * w, 1), block(2 * w, 4 * w, 2),
                                      block(4 * w, 4 * w, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({k: nn.Linear(4 * w, n) for k, n in ORACLE_HEADS.items()})

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (the mini world's stand-in for Inception features in FD)."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {k: head(f) for k, head in self.heads.items()}
