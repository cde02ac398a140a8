"""Loading text-to-image pipelines and CLIP models by hub id or local path (mini world by default).

Real checkpoints (`CompVis/stable-diffusion-v1-4`, `openai/clip-vit-large-patch14`, a local
folder) go through exactly the same diffusers / transformers `from_pretrained` calls as the
shipped mini world. Without network access a hub id that is not in the local cache raises
ModelNotFoundError with a one-line hint.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from conceptguard.errors import CorruptWeightsError, InvalidInputError, ModelNotFoundError
from conceptguard.miniworld.paths import MINIWORLD, clip_dir, is_shipped, pipeline_dir, verify

if TYPE_CHECKING:  # the central handles, for type hints only
    from diffusers import DiffusionPipeline
    from transformers import CLIPModel, CLIPProcessor


@torch.no_grad()
def weights_fingerprint(*models: torch.nn.Module) -> str:
    """A short hash of the models' weights (per-tensor sums): cache keys of what was trained on them."""
    import hashlib

    sums = [f"{p.detach().cpu().double().sum().item():.10e}" for m in models for p in m.parameters()]
    return hashlib.sha256(",".join(sums).encode()).hexdigest()[:16]


def _resolve(model: str | Path | None, default: Path) -> tuple[str, bool]:
    """-> (id or path to pass to from_pretrained, whether it is a local folder)."""
    if model is None or str(model) == MINIWORLD:
        return str(default), True
    text = str(model)
    if not text.strip():
        raise InvalidInputError("empty model id or path")
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InvalidInputError(f"{path} is a file, not a model folder")
        return str(path), True
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise InvalidInputError(f"model path not found: {text}")
    return text, False


def _load(loader, ident: str, local: bool, what: str, **kwargs):
    if local and is_shipped(Path(ident)):
        verify(Path(ident))
    quiet_libraries()
    try:
        return loader(ident, **kwargs)
    except OSError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if local and ("Unable to load weights" in first_line or "deserializ" in first_line):
            raise CorruptWeightsError(f"cannot load {what} from {ident}: damaged weight file ({first_line})") from exc
        if local:
            raise ModelNotFoundError(f"cannot load {what} from {ident}: {first_line}") from exc
        raise ModelNotFoundError(
            f"cannot load {what} {ident!r}: not a local folder and not in the Hugging Face cache "
            "(offline? download it elsewhere and pass its folder)") from exc
    except (ValueError, RuntimeError) as exc:  # safetensors / state-dict errors on damaged files
        raise CorruptWeightsError(f"cannot load {what} from {ident}: {str(exc).splitlines()[0]}") from exc


def quiet_libraries() -> None:
    """The libraries log at INFO/WARNING about optional extras, and their own loading bars would
    interleave with ours: keep the CLI's output clean."""
    for name in ("transformers", "diffusers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
# Where models load when a call names no device or dtype: set by the CLI's --device/--dtype
# (or CONCEPTGUARD_DEVICE / CONCEPTGUARD_DTYPE) and by a bench config's `device`/`dtype`.
_PLACEMENT: dict[str, str | None] = {"device": None, "dtype": None}


def set_placement(device: str | None = None, dtype: str | None = None) -> None:
    """The default device and dtype of every model loaded from now on (None: leave as is);
    checked now, so a bad value is one line before anything loads."""
    if device is not None:
        _PLACEMENT["device"] = resolve_device(device)
    if dtype is not None:
        resolve_dtype(dtype)
        _PLACEMENT["dtype"] = dtype


def resolve_device(device: str | None = None) -> str:
    """The device to load on: the one named, else the placement, else `cuda` when there is one."""
    name = device or _PLACEMENT["device"] or os.environ.get("CONCEPTGUARD_DEVICE") or (
        "cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(name)
    except RuntimeError:
        raise InvalidInputError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {name!r}: this machine (torch {torch.__version__}) has no CUDA device")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise InvalidInputError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(f"device {name!r}: MPS is not available on this machine")
    return name


def resolve_dtype(dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The diffusion pipeline's dtype: the one named, else the placement, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype or _PLACEMENT["dtype"] or os.environ.get("CONCEPTGUARD_DTYPE") or "float32"
    if name not in DTYPES:
        raise InvalidInputError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def load_pipeline(model: str | Path | None = None, device: str | None = None,
                  dtype: str | torch.dtype | None = None) -> DiffusionPipeline:
    """A diffusers text-to-image pipeline (the mini SD by default), safety checker off, on the
    device and in the dtype asked for (default: `resolve_device`, `resolve_dtype`)."""
    from diffusers import DiffusionPipeline

    device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    ident, local = _resolve(model, pipeline_dir())
    # fp32 is every library's default; naming a dtype only when it differs avoids the
    # torch_dtype/dtype rename warnings across diffusers versions.
    extra = {} if torch_dtype == torch.float32 else {"torch_dtype": torch_dtype}
    pipe = _load(DiffusionPipeline.from_pretrained, ident, local, "text-to-image pipeline",
                 safety_checker=None, requires_safety_checker=False, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_clip(model: str | Path | None = None, device: str | None = None) -> tuple[CLIPModel, CLIPProcessor]:
    """(CLIPModel, CLIPProcessor) — the mini CLIP by default — in float32 on the placement's
    device: CLIP filters and judges are calibrated in float32, and the pipeline's dtype stays its own."""
    from transformers import CLIPModel, CLIPProcessor

    device = resolve_device(device)
    ident, local = _resolve(model, clip_dir())
    clip = _load(CLIPModel.from_pretrained, ident, local, "CLIP model")
    processor = _load(CLIPProcessor.from_pretrained, ident, local, "CLIP processor")
    return clip.float().eval().to(device), processor


class ClipEmbedder:
    """Normalised CLIP image and text embeddings, the same calls for the mini and real CLIP.

    The towers and projections are called directly: `get_*_features` changed its return type
    between transformers versions.
    """

    def __init__(self, clip: CLIPModel, processor: CLIPProcessor) -> None:
        self.clip, self.processor = clip.eval(), processor

    @property
    def name(self) -> str:
        """The id this CLIP was loaded from (the mini world's by its name, not its folder)."""
        path = str(getattr(self.clip.config, "_name_or_path", "") or "")
        return MINIWORLD if not path or (Path(path).exists() and is_shipped(Path(path))) else path

    @torch.no_grad()
    def pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.clip.vision_model(pixel_values=pixel_values.to(self.clip.device, self.clip.dtype)).pooler_output
        return torch.nn.functional.normalize(self.clip.visual_projection(pooled).float(), dim=-1)

    def images(self, images) -> torch.Tensor:
        """Any PIL mode (grayscale, RGBA, palette) is read as RGB; no images give an empty batch."""
        if not images:
            return torch.empty(0, self.clip.config.projection_dim, device=self.clip.device)
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt").pixel_values
        return self.pixels(pixels)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        tok = self.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        pooled = self.clip.text_model(input_ids=tok.input_ids.to(self.clip.device),
                                      attention_mask=tok.attention_mask.to(self.clip.device)).pooler_output
        return torch.nn.functional.normalize(self.clip.text_projection(pooled).float(), dim=-1)

    @property
    def logit_scale(self) -> float:
        return float(self.clip.logit_scale.detach().exp())


def load_oracle(path: str | Path | None = None):
    from conceptguard.miniworld.oracle import Oracle

    if path is not None and not Path(path).is_dir():
        raise InvalidInputError(f"oracle folder not found: {path}")
    return Oracle.from_pretrained(path)
