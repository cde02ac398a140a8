"""Defense names -> defenses, for configs and the CLI. Stacks join names with "+".

Builders take the concept and a BuildContext (the pipeline, a CLIP embedder, a cache folder for
trained defenses). Trained defenses (ESD, UCE) are trained on first use and loaded from the
cache afterwards, keyed by method, concept and base model.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Callable


from conceptguard.concepts import Concept
from conceptguard.defenses.base import Defense
from conceptguard.errors import ConfigError

Builder = Callable[[Concept, "BuildContext"], list[Defense]]


@dataclass
class BuildContext:
    pipe: object
    cache: Path
    model_id: str = "miniworld"
    clip_id: str | None = None  # None: the mini CLIP
    seed: int = 0
    progress: Callable[[str, int, int], None] | None = None
    _embedder: object = field(default=None, repr=False)

    @property
    def embedder(self):
        """The CLIP used by CLIP-based filters: the mini CLIP for the mini world."""
        if self._embedder is None:
            from conceptguard.models import ClipEmbedder, load_clip

            self._embedder = ClipEmbedder(*load_clip(self.clip_id))
        return self._embedder

    def trained_dir(self, method: str, concept: str, recipe: object) -> Path:
        """Cache folder of a trained defense, keyed by the base model's id *and* weights, so a
        retrained model never picks up edits made for its predecessor, and by the training
        `recipe` (the method's hyper-parameters), so a changed default retrains instead of
        loading what the old one made. The weights are the whole pipeline's: some defenses
        (Espresso's fine-tune) learn from the images it decodes."""
        from conceptguard.models import weights_fingerprint

        pipe = self.pipe
        weights = weights_fingerprint(pipe.unet, pipe.vae, pipe.text_encoder)
        settings = json.dumps(asdict(recipe) if is_dataclass(recipe) else recipe, sort_keys=True, default=str)
        key = hashlib.sha256(f"{self.model_id}|{weights}|{settings}".encode()).hexdigest()[:10]
        return self.cache / "defenses" / f"{method}-{concept}-{key}-s{self.seed}"


def _blocklist(c: Concept, ctx: BuildContext) -> list[Defense]:
    from conceptguard.defenses.baselines.blocklist import KeywordBlocklist

    return [KeywordBlocklist.for_concepts([c])]


def _negative(c: Concept, ctx: BuildContext) -> list[Defense]:
    from conceptguard.defenses.baselines.negative_prompt import NegativePrompt

    return [NegativePrompt.for_concepts([c])]


def _sld(preset: str) -> Builder:
    def build(c: Concept, ctx: BuildContext) -> list[Defense]:
        from conceptguard.defenses.baselines.sld import SafeLatentDiffusion

        return [SafeLatentDiffusion.for_concepts([c], preset)]
    return build


def _safety_checker(c: Concept, ctx: BuildContext) -> list[Defense]:
    from conceptguard.defenses.baselines.safety_checker import SafetyCheckerFilter

    f = SafetyCheckerFilter(ctx.embedder, {c.name: c.train_phrasings or [c.c_u]})
    if ctx.model_id == "miniworld":  # calibrate on renders that do / do not show the concept
        from PIL import Image

        from conceptguard.miniworld.gates import concept_images
        from conceptguard.miniworld.world import CONCEPT_BY_NAME

        images, present = concept_images(CONCEPT_BY_NAME[c.name], 200, seed=ctx.seed + 7)
        pil = [Image.fromarray(im) for im in images]
        f.calibrate(c.name, [p for p, s in zip(pil, present) if s], [p for p, s in zip(pil, present) if not s])
    return [f]


def _recipe(module: str, name: str) -> Callable[[], object]:
    """A method's default hyper-parameters, read when a defense is built (modules load lazily)."""
    return lambda: getattr(importlib.import_module(module), name)


def _trained(method: str, train: Callable, recipe: Callable[[], object]) -> Builder:
    def build(c: Concept, ctx: BuildContext) -> list[Defense]:
        from conceptguard.defenses.baselines.weight_edit import WeightEdit

        folder = ctx.trained_dir(method, c.name, recipe())
        if (folder / "config.json").exists():
            return [WeightEdit.from_pretrained(folder)]
        edit = train(c, ctx)
        edit.save_pretrained(folder)
        return [edit]
    return build


def _esd(variant: str) -> Builder:
    def train(c: Concept, ctx: BuildContext):
        from conceptguard.defenses.baselines.esd import train_esd

        report = (lambda i, n, loss: ctx.progress(f"train esd-{variant} {c.name}", i, n)) if ctx.progress else None
        return train_esd(ctx.pipe, c, variant, seed=ctx.seed, progress=report)
    return _trained(f"esd-{variant}", train, _recipe("conceptguard.defenses.baselines.esd", "MINI"))


def _allbutone(c: Concept, ctx: BuildContext):
    from conceptguard.defenses.allbutone import train_allbutone

    report = (lambda i, n, loss: ctx.progress(f"train allbutone {c.name}", i, n)) if ctx.progress else None
    return train_allbutone(ctx.pipe, c, seed=ctx.seed, progress=report)


def _uce(c: Concept, ctx: BuildContext):
    from conceptguard.defenses.baselines.uce import train_uce
    from conceptguard.eval.prompts import miniworld_set

    preserve = None
    if ctx.model_id == "miniworld":  # keep unrelated scenes as they are
        preserve = [i.text for i in miniworld_set(c.name, "acceptable", 16, seed=ctx.seed + 99).items]
    return train_uce(ctx.pipe, c, preserve=preserve)


def _espresso(c: Concept, ctx: BuildContext) -> list[Defense]:
    from conceptguard.defenses.espresso import EspressoFilter

    return [EspressoFilter(ctx.embedder, [c])]


def _espresso_ft(c: Concept, ctx: BuildContext) -> list[Defense]:
    from conceptguard.defenses.espresso import FinetuneConfig, load_or_finetune

    report = (lambda i, n, loss: ctx.progress(f"train espresso-ft {c.name}", i, n)) if ctx.progress else None
    cfg = FinetuneConfig(seed=ctx.seed)
    return [load_or_finetune(ctx.trained_dir("espresso-ft", c.name, cfg), ctx.pipe, ctx.embedder, c, cfg,
                             progress=report)]


def _sanitizer(alpha: float) -> Builder:
    def build(c: Concept, ctx: BuildContext) -> list[Defense]:
        from conceptguard.defenses.sanitizer import SanitizerConfig, SanitizerDefense, train_sanitizer

        folder = ctx.trained_dir("sanitizer", c.name, SanitizerConfig())
        name = "sanitizer" if alpha == 1 else f"sanitizer-a{alpha:g}"
        if (folder / "config.json").exists():
            return [SanitizerDefense.from_pretrained(folder, alpha, name)]
        report = (lambda i, n, loss: ctx.progress(f"train sanitizer {c.name}", i, n)) if ctx.progress else None
        trained = train_sanitizer([c], ctx.pipe.text_encoder, ctx.pipe.tokenizer, progress=report,
                                  encoder_name=ctx.model_id)
        trained.save_pretrained(folder)
        trained.alpha, trained.name = alpha, name
        return [trained]
    return build


def _steerdiff(eps: float = 0.88, spans_only: bool = False) -> Builder:
    def build(c: Concept, ctx: BuildContext) -> list[Defense]:
        from conceptguard.defenses.steerdiff import SteerDiff, SteerDiffConfig, train_steerdiff

        folder = ctx.trained_dir("steerdiff", c.name, SteerDiffConfig())
        name = "steerdiff" + ("-spans" if spans_only else "") + ("" if eps == 0.88 else f"-e{eps:g}")
        if not (folder / "config.json").exists():
            report = (lambda i, n, loss: ctx.progress(f"train steerdiff {c.name}", i, n)) if ctx.progress else None
            train_steerdiff([c], ctx.pipe.text_encoder, ctx.pipe.tokenizer, progress=report,
                            encoder_name=ctx.model_id).save_pretrained(folder)
        return [SteerDiff.from_pretrained(folder, eps, spans_only, name)]
    return build


BUILDERS: dict[str, Builder] = {
    "none": lambda c, ctx: [],
    "blocklist": _blocklist,
    "negative-prompt": _negative,
    **{f"sld-{p}": _sld(p) for p in ("weak", "medium", "strong", "max")},
    "safety-checker": _safety_checker,
    "esd-x": _esd("x"),
    "esd-u": _esd("u"),
    "uce": _trained("uce", _uce, _recipe("conceptguard.defenses.baselines.uce", "PAPER")),
}
BASELINES = tuple(BUILDERS)
BUILDERS.update({"espresso": _espresso, "espresso-ft": _espresso_ft, "sanitizer": _sanitizer(1.0),
                 **{f"sanitizer-a{a:g}": _sanitizer(a) for a in (0.0, 0.5, 2.0)},
                 "allbutone": _trained("allbutone", _allbutone, _recipe("conceptguard.defenses.allbutone", "MINI")),
                 "steerdiff": _steerdiff(), "steerdiff-spans": _steerdiff(spans_only=True),
                 **{f"steerdiff-e{e:g}": _steerdiff(e) for e in (0.25, 0.5, 0.75, 1.0)}})


def register(name: str, builder: Builder) -> None:
    """Add a defense name (the CRT modules register theirs)."""
    BUILDERS[name] = builder


def check_stack(spec: str) -> str:
    parts = [p.strip() for p in spec.split("+")]
    for p in parts:
        if p not in BUILDERS:
            raise ConfigError(f"unknown defense {p!r}; known: {', '.join(BUILDERS)}")
    return "+".join(parts)


def build_stack(spec: str, concept: Concept, ctx: BuildContext) -> list[Defense]:
    defenses: list[Defense] = []
    for part in check_stack(spec).split("+"):
        defenses += BUILDERS[part](concept, ctx)
    return defenses
