"""Shared storage for defenses that change model weights: only the changed tensors are saved.

A WeightEdit is a ModelEdit holding {parameter name: new tensor} for one component; it saves
as safetensors + a JSON config naming the base model and concept, and applies to any pipeline
whose component has those parameters with the same shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from conceptguard.defenses.base import ModelEdit
from conceptguard.errors import ConfigError, CorruptWeightsError, ModelNotFoundError


class WeightEdit(ModelEdit):
    kind_name = "weight-edit"

    def __init__(self, tensors: dict[str, torch.Tensor], config: dict, component: str = "unet") -> None:
        self.tensors = tensors
        self.config = config
        self.component = component
        self.name = config.get("name", self.kind_name)

    @property
    def edits(self) -> tuple[str, ...]:
        return (self.component,)

    def apply_to(self, components: dict) -> None:
        module = components[self.component]
        params = dict(module.named_parameters())
        for key, value in self.tensors.items():
            if key not in params:
                raise ConfigError(f"{self.name}: the {self.component} has no parameter {key!r} "
                                  f"(trained for {self.config.get('base_model')})")
            if params[key].shape != value.shape:
                raise ConfigError(f"{self.name}: {key} has shape {tuple(params[key].shape)} here but "
                                  f"{tuple(value.shape)} in the edit (trained for {self.config.get('base_model')})")
            with torch.no_grad():
                params[key].copy_(value.to(params[key].dtype))

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.tensors.items()}, path / "edit.safetensors")
        (path / "config.json").write_text(json.dumps({**self.config, "component": self.component,
                                                      "kind": self.kind_name}, indent=1) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "WeightEdit":
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"no trained edit in {path} (config.json missing)")
        config = json.loads((path / "config.json").read_text())
        try:
            tensors = load_file(path / "edit.safetensors")
        except Exception as exc:  # safetensors raises several types on damaged files
            raise CorruptWeightsError(f"cannot load {path / 'edit.safetensors'}: {exc}") from exc
        component = config.pop("component", "unet")
        config.pop("kind", None)
        return cls(tensors, config, component)
