"""One way to save and load every trainable defense, in the style of diffusers' ConfigMixin.

A folder holds `config.json` (the constructor's settings: what the defense is, which model and
concept it was trained for, how) and one safetensors file of its tensors. `save_pretrained(dir)`
writes both; `from_pretrained(dir, **overrides)` reads them back, with keyword overrides of
settings that may change at use (a threshold, a strength). Errors are one line: a missing
folder or config is ModelNotFoundError, a damaged file CorruptWeightsError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load_file, save_file

from conceptguard.errors import CorruptWeightsError, InvalidInputError, ModelNotFoundError

CONFIG_NAME = "config.json"
T = TypeVar("T", bound="PretrainedMixin")


class PretrainedMixin:
    """Subclasses name their `kind` and weights file, and say how their tensors and config
    become an object (`from_state`)."""

    pretrained_kind: ClassVar[str]
    weights_name: ClassVar[str]

    def pretrained_config(self) -> dict[str, Any]:
        """What config.json records (everything `from_state` needs besides the tensors)."""
        raise NotImplementedError

    def state_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def from_state(cls: type[T], config: dict, tensors: dict[str, torch.Tensor], **overrides: Any) -> T:
        """Build the object; subclasses name the keyword overrides they accept."""
        raise NotImplementedError

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_tensors().items()},
                  str(path / self.weights_name))
        config = {**self.pretrained_config(), "kind": self.pretrained_kind}
        (path / CONFIG_NAME).write_text(json.dumps(config, indent=1, default=str) + "\n")

    @classmethod
    def from_pretrained(cls: type[T], path: str | Path, **overrides: Any) -> T:
        config = read_config(path)
        if config.get("kind") != cls.pretrained_kind:
            raise InvalidInputError(f"{path} holds a {config.get('kind')!r}, not a {cls.pretrained_kind!r}")
        weights = Path(path) / cls.weights_name
        try:
            tensors = load_file(str(weights))
        except Exception as exc:  # safetensors raises several types on missing or damaged files
            raise CorruptWeightsError(f"cannot load {weights}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
        try:
            return cls.from_state(config, tensors, **overrides)
        except (KeyError, RuntimeError, ValueError) as exc:  # tensors that do not fit the config
            raise CorruptWeightsError(f"damaged weights in {path}: {str(exc).splitlines()[0]}") from None


def read_config(path: str | Path) -> dict:
    """A saved defense's config.json (ModelNotFoundError when there is none)."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise ModelNotFoundError(f"no trained defense in {path} ({CONFIG_NAME} missing)")
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise CorruptWeightsError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CorruptWeightsError(f"{file} does not hold a settings mapping")
    return config
