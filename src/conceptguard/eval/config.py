"""The bench's run configuration: a validated YAML file, every field with a default."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from conceptguard.attacks import ATTACKS, get_attack
from conceptguard.defenses.registry import DEFENSES, NONE, check_stack
from conceptguard.domain import Domain
from conceptguard.domains import MINIWORLD, get_domain
from conceptguard.errors import ConceptGuardError, ConfigError, InvalidInputError
from conceptguard.eval.judges import check_judge
from conceptguard.images import IMAGE_SUFFIXES
from conceptguard.prompts import read_prompt_file

DEFAULT_STACKS = ("none", "blocklist", "negative-prompt", "sld-weak", "sld-medium", "sld-strong", "sld-max",
                  "safety-checker", "esd-x", "esd-u", "uce", "espresso", "espresso-ft", "sanitizer", "steerdiff",
                  "allbutone")
Scalar = bool | int | float | str  # a setting's value in YAML


class PromptFile(BaseModel):
    """A prompt file with a selection: `{path: i2p_benchmark.csv, categories: [sexual]}`."""

    model_config = ConfigDict(extra="forbid")

    path: str
    categories: list[str] | None = Field(None, min_length=1, description="keep the CSV rows whose `categories` "
                                         "column (comma-separated, as I2P's) names one of these")


class BenchConfig(BaseModel):
    """A benchmark run. Every field has a default: `conceptguard bench` with no config runs these.
    `concepts`, `prompt_sets` and `judges` default to the model's domain's (the mini world's
    five concepts, its three prompt sets, the oracle and CLIP)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(MINIWORLD, description="hub id or folder of a diffusers text-to-image pipeline")
    clip: str | None = Field(None, description="CLIP for CLIP-based judges, filters and attackers "
                             "(default: the mini CLIP in the mini world; a real model must name one)")
    defenses: list[str] = Field(default_factory=lambda: list(DEFAULT_STACKS),
                                description="defense stacks, each written \"a+b\"; \"none\" is always added")
    concepts: list[str] | None = None
    prompt_sets: list[str] | None = None
    prompt_files: dict[str, PromptFile] = Field(default_factory=dict,
                                         description="extra sets: name -> .txt/.csv file or a `conceptguard attack` folder; "
                                         "`{concept}` in a path: one file per concept; {path: ..., categories: [...]} "
                                         "selects rows of an I2P-style CSV")
    prompts_per_set: int = Field(10, ge=1, le=10_000, description="10: the default run (16 stacks x 5 "
                                 "concepts x 3 sets) takes ~15 minutes on 2 CPU cores once its defenses are trained")
    images_per_prompt: int = Field(1, ge=1, le=100)
    seed: int = 0
    defense_seed: int | None = Field(None, description="seed the trained defenses are trained with (default: "
                                     "`seed`); set it to measure the same trained defenses on other prompts and seeds")
    num_inference_steps: int = Field(25, ge=1, le=1000, validation_alias=AliasChoices("num_inference_steps", "steps"),
                                     description="denoising steps (also accepted as `steps`)")
    guidance_scale: float = Field(7.5, ge=0, validation_alias=AliasChoices("guidance_scale", "guidance"),
                                  description="classifier-free guidance (also accepted as `guidance`)")
    judges: list[str] | None = None
    batch_size: int = Field(48, ge=1, le=1024)
    attacks: list[str] = Field(default_factory=list, description="attacks run against every defense stack; "
                               "their prompts become `adversarial-<attack>` sets (docs/attacks.md)")
    attack_prompts: int = Field(8, ge=1, le=1000, description="adversarial prompts per attack, concept and stack")
    attack_budget: Literal["cpu", "paper"] = Field("cpu", description="cpu: small presets for the mini world")
    defense_settings: dict[str, dict[str, Scalar]] = Field(
        default_factory=dict, description="per defense name, hyper-parameters that replace its preset's "
        "(what `train --set key=value` sets), e.g. {esd-x: {iterations: 200}}")
    attack_settings: dict[str, dict[str, Scalar]] = Field(
        default_factory=dict, description="per attack name, budget values that replace the chosen budget's, "
        "e.g. {pez: {iterations: 100}}")
    device: str | None = Field(None, description="cpu, cuda, cuda:N or mps for every model the run loads "
                               "(default: --device, else cuda when there is one)")
    dtype: Literal["float32", "float16", "bfloat16", "float64"] | None = Field(
        None, description="the diffusion pipeline's dtype (default: --dtype, else float32)")
    results_doc: str | None = Field(None, description="also write this Markdown file (e.g. docs/RESULTS.md)")
    fid_reference: str | None = Field(None, description="folder of real images (e.g. the COCO images whose captions "
                                      "are the `acceptable` CSV): FID of every stack's `acceptable` images against them")
    fid_features: Literal["clip", "inception"] = Field("clip", description="FID's features: clip, the run's CLIP "
                                                       "image embeddings (FD_CLIP); inception, clean-fid's (fid_inception)")
    fid_inception: str | None = Field(None, description="a local copy of clean-fid's TorchScript Inception-v3, "
                                      "inception-2015-12-05.pt (for fid_features: inception)")

    @property
    def training_seed(self) -> int:
        return self.seed if self.defense_seed is None else self.defense_seed

    @field_validator("attacks")
    @classmethod
    def _known_attacks(cls, value: list[str]) -> list[str]:
        return [_as_value_error(ATTACKS.check, v) for v in value]

    @field_validator("defenses")
    @classmethod
    def _known_defenses(cls, value: list[str]) -> list[str]:
        stacks = [_as_value_error(check_stack, v) for v in value]
        return stacks if NONE in stacks else [NONE, *stacks]  # the reference for utility metrics

    @field_validator("defense_settings")
    @classmethod
    def _known_defense_settings(cls, value: dict[str, dict[str, Scalar]]) -> dict[str, dict[str, Scalar]]:
        for name in value:  # the values are checked against the method's recipe when it is built
            if name != NONE:
                _as_value_error(DEFENSES.check, name)
        return value

    @field_validator("attack_settings")
    @classmethod
    def _valid_attack_settings(cls, value: dict[str, dict[str, Scalar]]) -> dict[str, dict[str, Scalar]]:
        for name, settings in value.items():
            _as_value_error(lambda n: get_attack(n, "cpu", settings), name)
        return value

    @field_validator("device")
    @classmethod
    def _usable_device(cls, value: str | None) -> str | None:
        from conceptguard.models import resolve_device

        return None if value is None else _as_value_error(resolve_device, value)

    @field_validator("prompt_files", mode="before")
    @classmethod
    def _paths_as_prompt_files(cls, value):
        """A bare path is a PromptFile with every row."""
        return {k: {"path": v} if isinstance(v, str) else v for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("judges")
    @classmethod
    def _known_judges(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_as_value_error(check_judge, v) for v in value]

    @model_validator(mode="after")
    def _domain_defaults(self, info: ValidationInfo) -> BenchConfig:
        """Fill and check what depends on the model's domain."""
        domain = self.domain()
        try:
            domain.clip_id  # a real model must name its CLIP: refused now, before anything loads
        except ConceptGuardError as exc:
            raise ValueError(f"clip: {exc}") from exc
        try:
            names = self.concepts if self.concepts is not None else domain.default_concepts
            if not names:
                raise ValueError("concepts: the list is empty (leave the field out for the domain's concepts)")
            self.concepts = [domain.concept(n).name for n in names]
        except ConceptGuardError as exc:  # the message names the field: the error has no location
            raise ValueError(f"concepts: {exc}") from exc
        if self.prompt_sets is None:
            self.prompt_sets = list(domain.prompt_set_names)
        bad = [v for v in self.prompt_sets if v not in domain.prompt_set_names]
        if bad:
            known = ", ".join(domain.prompt_set_names) or "none (real models)"
            raise ValueError(f"prompt_sets: unknown prompt set {bad[0]!r}; built-in sets: {known} "
                             "(user files go under prompt_files)")
        if self.judges is None:
            self.judges = domain.default_judges(self.concepts)
        self._check_fid_settings()
        if not (info.context or {}).get("plan"):  # a plan (`bench --dry-run`) lists missing files instead
            self._check_prompt_files()
            self._check_fid_files()
        return self

    def _check_fid_settings(self) -> None:
        if self.fid_features == "inception" and not self.fid_inception:
            raise ValueError("fid_inception: fid_features: inception needs a local copy of clean-fid's "
                             "inception-2015-12-05.pt named here")
        if self.fid_reference and "acceptable" not in [*(self.prompt_sets or []), *self.prompt_files]:
            raise ValueError("fid_reference: FID is measured on the `acceptable` set, and this run has none "
                             "(add it to prompt_sets, or name a prompt file `acceptable`)")

    def _check_fid_files(self) -> None:
        """The reference folder holds images, and clean-fid's Inception file is there."""
        if self.fid_reference:
            folder = Path(self.fid_reference)
            if not folder.is_dir() or not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
                raise ValueError(f"fid_reference: {folder} is not a folder of images")
        if self.fid_features == "inception" and self.fid_inception and not Path(self.fid_inception).is_file():
            raise ValueError(f"fid_inception: no file {self.fid_inception}")

    def _check_prompt_files(self) -> None:
        """Read each file now (one per concept where the path says `{concept}`): a bad one stops
        the run before anything is written; a folder must be one `conceptguard attack` saved."""
        for name, spec in self.prompt_files.items():
            for path in dict.fromkeys(self.prompt_file(name, c) for c in self.concepts or []):
                if Path(path).is_dir():
                    if not (Path(path) / "result.json").is_file():
                        raise ValueError(f"prompt_files: {name}: {path} is a folder without the result.json of "
                                         "`conceptguard attack`")
                else:
                    try:
                        read_prompt_file(path, "check", name, spec.categories)
                    except ConceptGuardError as exc:
                        raise ValueError(f"prompt_files: {name}: {exc}") from exc

    def domain(self) -> Domain:
        return get_domain(self.model, self.clip)

    def prompt_file(self, name: str, concept: str) -> str:
        """The file of prompt set `name` for `concept` (`{concept}` in a path names one file per concept)."""
        return self.prompt_files[name].path.replace("{concept}", concept)

    def prompt_categories(self, name: str) -> list[str] | None:
        """The categories prompt set `name` keeps from its CSV (None: every row)."""
        return self.prompt_files[name].categories


def _as_value_error(check, value):
    """Run a check that raises our errors; pydantic reports ValueErrors with the field's name."""
    try:
        return check(value)
    except ConceptGuardError as exc:
        raise ValueError(str(exc)) from exc


def load_config(path: str | Path | None, plan: bool = False) -> BenchConfig:
    """Read and validate a YAML config; any problem is one ConfigError line naming the field.
    `plan`: prompt files are not read (a dry run lists the missing ones)."""
    if path is None:
        return BenchConfig()
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, not {type(data).__name__}")
    try:
        return BenchConfig.model_validate(data, context={"plan": plan})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{path}: {field + ': ' if field else ''}{message}") from exc


__all__ = ["DEFAULT_STACKS", "BenchConfig", "load_config"]
