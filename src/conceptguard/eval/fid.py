"""FID against real images: the Frechet distance between the features of a stack's images and
those of a folder of real images (e.g. the COCO images whose captions are the `acceptable` prompts).

Two feature extractors:
- `clip`: the run's CLIP image embeddings (unit length), "FD_CLIP" -- offline wherever the run's
  CLIP is, and the features the filters and judges already use;
- `inception`: clean-fid's FID -- Inception-v3's 2048 pool features from the TorchScript model
  clean-fid and StyleGAN2-ADA load (`inception-2015-12-05.pt`), images resized to 299 px as
  clean-fid's "clean" mode does (PIL bicubic on each channel in float). The file is not shipped
  and never downloaded here: the user names a local copy (`fid_inception` in the bench config).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from conceptguard.domain import Domain
from conceptguard.errors import InvalidInputError
from conceptguard.eval.config import BenchConfig
from conceptguard.eval.metrics import FeatureGaussian, frechet_distance, frechet_interval
from conceptguard.eval.stats import Interval
from conceptguard.images import as_rgb, read_image_folder
from conceptguard.models import ClipEmbedder, load_clip, resolve_device

INCEPTION_SIZE = 299


class FeatureExtractor(Protocol):
    name: str

    def __call__(self, images: list[Image.Image]) -> np.ndarray: ...


class ClipFeatures:
    """The CLIP image embeddings the run's CLIP judge and filters use (FD_CLIP)."""

    def __init__(self, embedder, clip_id: str) -> None:
        self.embedder = embedder
        self.name = f"CLIP image embeddings ({clip_id})"

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        return self.embedder.images(images).float().cpu().numpy()


def clean_resize(image: Image.Image, size: int = INCEPTION_SIZE) -> np.ndarray:
    """clean-fid's "clean" resize: each channel resized as a float image with PIL's bicubic
    filter (antialiased), clipped to [0, 255]; [3, size, size] float32."""
    pixels = np.asarray(as_rgb(image), dtype=np.float32)
    channels = [np.asarray(Image.fromarray(pixels[:, :, c]).resize((size, size), resample=Image.Resampling.BICUBIC))
                for c in range(3)]
    return np.clip(np.stack(channels), 0, 255).astype(np.float32)


class InceptionFeatures:
    """Inception-v3 pool features from clean-fid's TorchScript file, called as clean-fid calls it:
    `model(x, return_features=True)` on [B, 3, 299, 299] floats in [0, 255]."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 32) -> None:
        path = Path(path)
        if not path.is_file():
            raise InvalidInputError(f"fid_inception: no file {path} (clean-fid's inception-2015-12-05.pt)")
        try:
            self.model = torch.jit.load(str(path), map_location=device).eval()
        except RuntimeError as exc:
            raise InvalidInputError(f"fid_inception: {path} is not a TorchScript model: {str(exc).splitlines()[0]}") from exc
        self.device, self.batch_size = torch.device(device), batch_size
        self.name = f"Inception-v3 pool features ({path.name}, clean-fid resize)"

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.stack([clean_resize(im) for im in images[i:i + self.batch_size]])).to(self.device)
            out.append(self.model(x, return_features=True).reshape(len(x), -1).float().cpu().numpy())
        return np.concatenate(out) if out else np.empty((0, 0), dtype=np.float32)


class RealImageReference:
    """A folder of real images as FID's reference: its features fitted once. The images' order and
    number are the folder's; the interval resamples the generated images only (the reference is
    the fixed population FID compares against)."""

    def __init__(self, images: list[Image.Image], features: FeatureExtractor, source: str) -> None:
        if len(images) < 2:
            raise InvalidInputError(f"fid_reference: {source} has {len(images)} image(s); FID needs at least 2")
        self.features, self.n = features, len(images)
        fitted = FeatureGaussian.fit(features(images))
        assert fitted is not None
        self.gaussian = fitted
        self.describe = f"FID vs {self.n} real images in {source}, on {features.name}"

    def fid(self, images: list[Image.Image]) -> tuple[float, Interval | None]:
        """The FID of `images` and its 95% bootstrap interval."""
        ours = self.features(images)
        return (frechet_distance(ours, self.gaussian),
                frechet_interval(ours, lambda x: frechet_distance(x, self.gaussian)))


def real_image_reference(config: BenchConfig, domain: Domain, clip_judge=None) -> RealImageReference:
    """The reference of a bench config's `fid_reference`, on its `fid_features` (the CLIP judge's
    embedder when there is one: no second copy of the CLIP)."""
    assert config.fid_reference
    features: FeatureExtractor
    if config.fid_features == "inception":
        assert config.fid_inception
        features = InceptionFeatures(config.fid_inception, resolve_device(config.device))
    else:
        embedder = clip_judge.embedder if clip_judge else ClipEmbedder(*load_clip(domain.clip_id))
        features = ClipFeatures(embedder, domain.clip_id)
    return RealImageReference(read_image_folder(Path(config.fid_reference)), features, config.fid_reference)


__all__ = ["real_image_reference", "ClipFeatures", "FeatureExtractor", "InceptionFeatures", "RealImageReference", "clean_resize"]
