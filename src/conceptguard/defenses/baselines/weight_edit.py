"""Shared storage for defenses that change model weights: only the changed tensors are saved.

A WeightEdit is a ModelEdit holding {parameter name: new tensor} for one component; it saves
as safetensors + a JSON config naming the base model and concept, and applies to any pipeline
whose component has those parameters with the same shapes.
"""

from __future__ import annotations

import torch

from conceptguard.defenses.base import ModelEdit
from conceptguard.defenses.pretrained import PretrainedMixin
from conceptguard.errors import ConfigError


class WeightEdit(PretrainedMixin, ModelEdit):
    pretrained_kind = "weight-edit"
    weights_name = "edit.safetensors"

    def __init__(self, tensors: dict[str, torch.Tensor], config: dict, component: str = "unet") -> None:
        self.tensors = tensors
        self.config = {**config, "component": component}
        self.component = component
        self.name = config.get("name", self.pretrained_kind)

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

    def pretrained_config(self) -> dict:
        return self.config

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.tensors

    @classmethod
    def from_state(cls, config: dict, tensors: dict[str, torch.Tensor], **overrides) -> WeightEdit:
        config = {k: v for k, v in config.items() if k != "kind"}
        component = config.pop("component", "unet")
        return cls(tensors, {**config, **overrides}, component)
