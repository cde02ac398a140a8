"""Defense names -> defenses, for configs, the CLI and the Python API.

Each defense registers its names next to its class or builder with `@DEFENSES.register(name,
**kwargs)`; `build_stack("blocklist+espresso", concept, ctx)` builds a stack. A builder takes
the concept, a BuildContext (the pipeline, the domain, a cache folder for trained defenses,
seed and progress) and the keyword arguments registered with the name. Trained defenses are
trained on first use and loaded from the cache afterwards (`BuildContext.load_or_train`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, TypeVar

from conceptguard.concepts import Concept
from conceptguard.defenses.base import Defense
from conceptguard.domain import Domain
from conceptguard.errors import ConfigError
from conceptguard.models import ClipEmbedder, load_clip, weights_fingerprint
from conceptguard.progress import Progress
from conceptguard.registry import Registry


class Builder(Protocol):
    def __call__(self, concept: Concept, ctx: BuildContext, **kwargs: Any) -> Defense: ...


DEFENSES: Registry[Any] = Registry("defense")
NONE = "none"  # the undefended model: the reference every metric compares with
# defenses trained on first use (then cached), whose hyper-parameters `--set` / `defense_settings` set
TRAINABLE = ("esd-x", "esd-u", "uce", "allbutone", "sanitizer", "steerdiff", "espresso-ft")


class Pretrained(Protocol):
    def save_pretrained(self, path: str | Path) -> None: ...


P = TypeVar("P", bound=Pretrained)
R = TypeVar("R")


def _coerce(key: str, text: str, default: Any) -> Any:
    """A `--set key=value` string as the type of the setting's default."""
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise ConfigError(f"setting {key}: {text!r} is not a {type(default).__name__}") from None
    return None if text.lower() == "none" else text


def apply_overrides(recipe: Any, overrides: Mapping[str, str]) -> Any:
    """A method's hyper-parameters (a dataclass or a dict) with `key=value` overrides applied."""
    if not overrides:
        return recipe
    is_config = is_dataclass(recipe) and not isinstance(recipe, type)
    current = {f.name: getattr(recipe, f.name) for f in fields(recipe)} if is_config else dict(recipe)
    unknown = [k for k in overrides if k not in current]
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}; this method's settings: {', '.join(current)}")
    new = {k: _coerce(k, v, current[k]) for k, v in overrides.items()}
    return replace(recipe, **new) if is_config else {**current, **new}


@dataclass
class BuildContext:
    """What building a defense may need besides its concept."""

    pipe: Any
    domain: Domain
    cache: Path
    seed: int = 0
    progress: Progress | None = None
    overrides: dict[str, str] = field(default_factory=dict)  # `--set key=value` for trained defenses
    # models loaded once and shared by the contexts `with_overrides` derives from this one
    _shared: dict[str, Any] = field(default_factory=dict, repr=False)
    _recipe_read: bool = field(default=False, repr=False)  # did a builder take its settings from here?

    def recipe(self, default: R) -> R:
        """A trained defense's hyper-parameters: its default with this context's overrides."""
        self._recipe_read = True
        return apply_overrides(default, self.overrides)

    @property
    def embedder(self) -> ClipEmbedder:
        """The CLIP used by CLIP-based filters: the domain's."""
        if "embedder" not in self._shared:
            self._shared["embedder"] = ClipEmbedder(*load_clip(self.domain.clip_id))
        return self._shared["embedder"]

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> BuildContext:
        """This context with more `key=value` settings (a bench config's `defense_settings`)."""
        if not overrides:
            return self
        return replace(self, overrides={**self.overrides, **{k: str(v) for k, v in overrides.items()}})

    def trained_dir(self, method: str, concept: str, recipe: object, revision: int = 1) -> Path:
        """Cache folder of a trained defense, keyed by the base model's id *and* weights, so a
        retrained model never picks up edits made for its predecessor, and by the training
        `recipe` (the method's hyper-parameters), so a changed default retrains instead of
        loading what the old one made. The weights are the whole pipeline's: some defenses
        (Espresso's fine-tune) learn from the images it decodes. `revision` counts changes to a
        method's training code that its recipe does not show (revision 1 adds nothing to the key)."""
        pipe = self.pipe
        weights = weights_fingerprint(pipe.unet, pipe.vae, pipe.text_encoder)
        settings = json.dumps(asdict(recipe) if is_dataclass(recipe) and not isinstance(recipe, type) else recipe,
                              sort_keys=True, default=str)
        code = f"|r{revision}" if revision > 1 else ""
        key = hashlib.sha256(f"{self.domain.model_id}|{weights}|{settings}{code}".encode()).hexdigest()[:10]
        return self.cache / "defenses" / f"{method}-{concept}-{key}-s{self.seed}"

    def load_or_train(self, method: str, concept: Concept, recipe: object, train: Callable[[], P],
                      load: Callable[[Path], P], revision: int = 1) -> P:
        """The cached defense for (method, concept, recipe, revision), trained and saved on first use."""
        folder = self.trained_dir(method, concept.name, recipe, revision)
        if (folder / "config.json").exists():
            return load(folder)
        trained = train()
        trained.save_pretrained(folder)
        return trained


@dataclass(frozen=True)
class DefenseStack:
    """Defense names applied together, written "a+b" everywhere (config, store, results, report).
    The empty stack is "none", the undefended model."""

    names: tuple[str, ...]

    @classmethod
    def parse(cls, spec: str | DefenseStack) -> DefenseStack:
        """Validate a "a+b" spec against the registry ("none" alone is the empty stack)."""
        if isinstance(spec, DefenseStack):
            return spec
        parts = [p.strip() for p in str(spec).split("+")]
        if parts == [NONE]:
            return cls(())
        for p in parts:
            DEFENSES.check(p)
        return cls(tuple(parts))

    @property
    def label(self) -> str:
        return "+".join(self.names) or NONE

    def __str__(self) -> str:
        return self.label


def check_stack(spec: str) -> str:
    """The canonical label of a stack spec (ConfigError for unknown names)."""
    return DefenseStack.parse(spec).label


def build_defense(name: str, concept: Concept, ctx: BuildContext) -> Defense:
    obj, kwargs = DEFENSES.get(name)
    builder: Builder = getattr(obj, "build") if isinstance(obj, type) else obj
    return builder(concept, ctx, **kwargs)


def build_defenses(stack: str | DefenseStack, concept: Concept, ctx: BuildContext,
                   settings: Mapping[str, Mapping[str, Any]] | None = None) -> list[Defense]:
    """The defenses of a stack for one concept, in the stack's order; `settings` gives a
    defense's name the hyper-parameters that replace its preset's."""
    settings = settings or {}
    defenses = []
    for name in DefenseStack.parse(stack).names:
        mine = ctx.with_overrides(settings.get(name))
        defenses.append(build_defense(name, concept, mine))
        if settings.get(name) and not mine._recipe_read:
            raise ConfigError(f"{name} has no hyper-parameters to set (settings are for trained defenses)")
    return defenses


__all__ = ["DEFENSES", "NONE", "TRAINABLE", "BuildContext", "ConfigError", "DefenseStack", "build_defense", "build_defenses",
           "check_stack"]
