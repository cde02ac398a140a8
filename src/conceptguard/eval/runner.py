"""The benchmark runner: config -> (defense stack x concept x prompt set) -> images -> judges -> store.

Images are generated in batches through GuardedPipeline, saved on disk under a content key,
judged, and stored one SQLite row each; rows already in the store are skipped, so a run that
was killed resumes where it stopped. Aggregation turns rows into the report's metric rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from conceptguard.concepts import get_concept
from conceptguard.errors import ConfigError, InvalidInputError
from conceptguard.eval import metrics
from conceptguard.eval.prompts import MINIWORLD_SETS, PromptSet, load_prompt_file, miniworld_set
from conceptguard.eval.store import RowKey, Store

Progress = Callable[[str, int, int], None]  # (what, done, total)


class BenchConfig(BaseModel):
    """A benchmark run. Every field has a default: `conceptguard bench` with no config runs these."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("miniworld", description="hub id or folder of a diffusers text-to-image pipeline")
    clip: str | None = Field(None, description="CLIP for CLIP-based judges and filters (default: the mini CLIP)")
    defenses: list[str] = Field(default_factory=lambda: ["none", "blocklist", "negative-prompt", "sld-weak",
                                                         "sld-medium", "sld-strong", "sld-max", "safety-checker",
                                                         "esd-x", "esd-u", "uce", "espresso",
                                                         "espresso-ft", "sanitizer", "steerdiff",
                                                         "allbutone"])
    concepts: list[str] = Field(default_factory=lambda: ["burning", "shattered", "glimmer", "zorbo", "velmora"])
    prompt_sets: list[str] = Field(default_factory=lambda: list(MINIWORLD_SETS))
    prompt_files: dict[str, str] = Field(default_factory=dict, description="extra sets: name -> .txt/.csv file or a `conceptguard attack` folder")
    prompts_per_set: int = Field(10, ge=1, le=10_000, description="10 keeps the default run (16 stacks x 5 "
                                 "concepts x 3 sets) within 15 minutes on 2 CPU cores")
    images_per_prompt: int = Field(1, ge=1, le=100)
    seed: int = 0
    steps: int = Field(25, ge=1, le=1000)
    guidance: float = Field(7.5, ge=0)
    judges: list[str] = Field(default_factory=lambda: ["oracle", "clip"])
    batch_size: int = Field(48, ge=1, le=1024)
    attacks: list[str] = Field(default_factory=list, description="attacks run against every defense stack; "
                               "their prompts become `adversarial-<attack>` sets (attacks.md)")
    attack_prompts: int = Field(8, ge=1, le=1000, description="adversarial prompts per attack, concept and stack")
    attack_budget: Literal["cpu", "paper"] = Field("cpu", description="cpu: small presets for the mini world")
    results_doc: str | None = Field(None, description="also write this Markdown file (e.g. docs/RESULTS.md)")

    @field_validator("attacks")
    @classmethod
    def _known_attacks(cls, value: list[str]) -> list[str]:
        from conceptguard.attacks import ATTACK_NAMES

        bad = [v for v in value if v not in ATTACK_NAMES]
        if bad:
            raise ValueError(f"unknown attack {bad[0]!r}; one of {', '.join(ATTACK_NAMES)}")
        return value

    @field_validator("defenses")
    @classmethod
    def _known_defenses(cls, value: list[str]) -> list[str]:
        from conceptguard.defenses.registry import check_stack

        try:
            stacks = [check_stack(v) for v in value]
        except ConfigError as exc:  # pydantic reports ValueErrors with the field's name
            raise ValueError(str(exc)) from exc
        return stacks if "none" in stacks else ["none", *stacks]  # the reference for utility metrics

    @field_validator("concepts")
    @classmethod
    def _known_concepts(cls, value: list[str]) -> list[str]:
        try:
            return [get_concept(v).name for v in value]
        except InvalidInputError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("prompt_sets")
    @classmethod
    def _known_sets(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if v not in MINIWORLD_SETS]
        if bad:
            raise ValueError(f"unknown prompt set {bad[0]!r}; one of {', '.join(MINIWORLD_SETS)} "
                             "(user files go under prompt_files)")
        return value

    @field_validator("judges")
    @classmethod
    def _known_judges(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if v not in ("oracle", "clip")]
        if bad:
            raise ValueError(f"unknown judge {bad[0]!r}; the bench uses oracle and/or clip")
        return value


def load_config(path: str | Path | None) -> BenchConfig:
    """Read and validate a YAML config; any problem is one ConfigError line naming the field."""
    if path is None:
        return BenchConfig()
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, not {type(data).__name__}")
    try:
        return BenchConfig(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "config"
        message = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{path}: {field}: {message}") from exc


def _seed(base: int, prompt_index: int, image_index: int, per_prompt: int) -> int:
    return base * 1_000_003 + prompt_index * per_prompt + image_index


class Runner:
    def __init__(self, config: BenchConfig, out_dir: Path, progress: Progress | None = None) -> None:
        from conceptguard.miniworld.data import cache_dir

        self.config, self.out = config, out_dir
        self.images_dir = out_dir / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(out_dir / "results.sqlite")
        self.progress = progress
        self.cache = cache_dir()
        self._pipe = self._oracle = self._clip = None
        self._ctx = self._guard = self._guard_key = None

    # lazily loaded, so a resumed run with nothing left to do loads no model
    @property
    def pipe(self):
        if self._pipe is None:
            from conceptguard.models import load_pipeline

            self._pipe = load_pipeline(self.config.model)
        return self._pipe

    @property
    def oracle(self):
        if self._oracle is None and "oracle" in self.config.judges:
            from conceptguard.eval.judges import OracleJudge

            self._oracle = OracleJudge()
        return self._oracle

    @property
    def clip(self):
        if self._clip is None and "clip" in self.config.judges:
            from conceptguard.eval.judges import ClipZeroShotJudge
            from conceptguard.models import ClipEmbedder, load_clip

            self._clip = ClipZeroShotJudge(ClipEmbedder(*load_clip(self.config.clip)))
        return self._clip

    def prompt_sets(self, concept: str) -> list[PromptSet]:
        """The sets every stack is measured on (the adversarial ones depend on the stack)."""
        c = self.config
        sets = [miniworld_set(concept, name, c.prompts_per_set, seed=c.seed) for name in c.prompt_sets]
        sets += [load_prompt_file(p, concept, name) for name, p in c.prompt_files.items()]
        return sets

    def keys(self, stack: str, pset: PromptSet) -> list[tuple[RowKey, int, int]]:
        c = self.config
        return [(RowKey(stack, pset.concept, pset.id, i, _seed(c.seed, i, k, c.images_per_prompt), k), i, k)
                for i in range(len(pset.items)) for k in range(c.images_per_prompt)]

    # ------------------------------------------------------------------ attacks
    @property
    def _attack_index_path(self) -> Path:
        return self.out / "attacks" / "index.json"

    def _attack_index(self) -> dict[str, str]:
        """(attack|stack|concept) -> result folder; results that cannot differ share a folder."""
        path = self._attack_index_path
        return json.loads(path.read_text()) if path.is_file() else {}

    def attack_sets(self, stack: str, concept: str, compute: bool = False) -> list[PromptSet]:
        """The stack's adversarial prompt sets for a concept: found against that stack (run now
        when `compute`, else only those already on disk)."""
        from conceptguard.attacks import AttackResult

        index, sets = self._attack_index(), []
        for name in self.config.attacks:
            folder = index.get(f"{name}|{stack}|{concept}")
            if folder is None or not (self.out / folder / "result.json").is_file():
                if not compute:
                    continue
                folder = self._run_attack(name, stack, concept)
            pset = AttackResult.load(self.out / folder).prompt_set()
            if all(pset.id != s.id for s in sets):  # an adaptive form with nothing to adapt to is the plain one
                sets.append(pset)
        return sets

    def _run_attack(self, name: str, stack: str, concept: str) -> str:
        from conceptguard.attacks import AttackTarget, get_attack

        c = self.config
        guard = self.guard(stack, concept)
        attack = get_attack(name, c.attack_budget)
        target = AttackTarget(guard, get_concept(concept), stack, self._context().embedder, self.progress)
        folder = f"attacks/{attack.cache_name(target)}"
        if not (self.out / folder / "result.json").is_file():
            if self.progress:
                self.progress(f"attack {name} {concept} @ {stack}", 0, 1)
            attack.run(target, c.attack_prompts, seed=c.seed).save(self.out / folder)
            if self.progress:
                self.progress(f"attack {name} {concept} @ {stack}", 1, 1)
        index = self._attack_index()
        index[f"{name}|{stack}|{concept}"] = folder
        self._attack_index_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._attack_index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
        os.replace(tmp, self._attack_index_path)
        return folder

    def attack_costs(self) -> list[dict]:
        """What each stored attack run cost (one entry per distinct result)."""
        from conceptguard.attacks import AttackResult

        folders = sorted(set(self._attack_index().values()))
        return [AttackResult.load(self.out / f).cost() for f in folders if (self.out / f / "result.json").is_file()]

    # ------------------------------------------------------------------ generation
    def _context(self):
        from conceptguard.defenses.registry import BuildContext

        if self._ctx is None:
            c = self.config
            self._ctx = BuildContext(self.pipe, self.cache, c.model, c.clip, c.seed, self.progress)
        return self._ctx

    def guard(self, stack: str, concept: str):
        """The guard stack for (stack, concept); only the latest one is kept in memory."""
        from conceptguard.defenses.registry import build_stack
        from conceptguard.guard import GuardedPipeline

        if self._guard_key != (stack, concept):
            self._guard = GuardedPipeline(self.pipe, build_stack(stack, get_concept(concept), self._context()))
            self._guard_key = (stack, concept)
        return self._guard

    def run(self) -> int:
        """Generate and judge every missing row; returns how many rows were added.

        Works through one (concept, stack) at a time: its attacks are run against it first
        (results kept on disk), then its missing rows are generated in batches.
        """
        c = self.config
        per_pair = sum(len(s.items) for s in self.prompt_sets(c.concepts[0])) if c.concepts else 0
        per_pair += len(c.attacks) * c.attack_prompts
        total = len(c.concepts) * len(c.defenses) * per_pair * c.images_per_prompt
        done = min(self.store.count(), total)
        added = 0
        for concept in c.concepts:
            for stack in c.defenses:
                sets = self.prompt_sets(concept) + self.attack_sets(stack, concept, compute=True)
                for pset in sets:
                    keys = self.keys(stack, pset)
                    have = self.store.existing([k for k, _, _ in keys])
                    todo = [(k, i, j) for k, i, j in keys if str(k) not in have]
                    for b in range(0, len(todo), c.batch_size):
                        batch = todo[b:b + c.batch_size]
                        self.store.add(self._run_batch(self.guard(stack, concept), stack, concept, pset, batch))
                        added += len(batch)
                        done += len(batch)
                        if self.progress:
                            self.progress("generate + judge", min(done, total), total)
        return added

    def _image_path(self, stack: str, concept: str, prompt: str, seed: int) -> Path:
        c = self.config
        key = hashlib.sha256(f"{c.model}|{stack}|{concept}|{prompt}|{seed}|{c.steps}|{c.guidance}".encode()).hexdigest()[:20]
        return self.images_dir / key[:2] / f"{key}.png"

    def _run_batch(self, guard, stack: str, concept: str, pset: PromptSet, batch) -> list[dict]:
        c = self.config
        t0 = time.perf_counter()
        prompts = [pset.items[i].text for _, i, _ in batch]
        seeds = [k.seed for k, _, _ in batch]
        guard.learned_tokens = pset.tokens  # a CCE set's placeholder tokens
        out = guard(prompts, seed=seeds, num_inference_steps=c.steps, guidance_scale=c.guidance,
                    batch_size=c.batch_size)
        judged = self._judge(out.images, concept, prompts)
        per_image = (time.perf_counter() - t0) / len(batch)
        rows = []
        for (key, i, k), prompt, image, raw, record, verdict in zip(batch, prompts, out.images, out.unfiltered,
                                                                    out.records, judged):
            path = self._image_path(stack, concept, prompt, key.seed)
            _save(image, path)
            saved = record.as_dict()
            if record.blocked and raw is not None:  # what the filter saw, for certificates
                _save(raw, path.with_suffix(".unfiltered.png"))
                saved["unfiltered_image"] = str(path.with_suffix(".unfiltered.png").relative_to(self.out))
            rows.append({"key": str(key), "stack": stack, "concept": concept, "prompt_set": pset.name,
                         "set_id": pset.id, "prompt_index": i, "prompt": prompt, "seed": key.seed,
                         "image_index": k, "image": str(path.relative_to(self.out)), "blocked": record.blocked,
                         "blocked_by": record.blocked_by, "record": saved, "judges": verdict,
                         "expected": pset.items[i].expected, "seconds": per_image})
        return rows

    def _judge(self, images: list[Image.Image], concept: str, prompts: list[str]) -> list[dict]:
        verdicts: list[dict] = [{} for _ in images]
        if self.oracle is not None:
            for v, o in zip(verdicts, self.oracle.judge(images, concept)):
                v["oracle"] = o
        if self.clip is not None:
            for v, o in zip(verdicts, self.clip.judge(images, concept)):
                v["clip"] = o
            for v, s in zip(verdicts, self.clip_scores(images, prompts)):
                v["clip"]["score"] = s
        return verdicts

    def clip_scores(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        """CLIP score as in torchmetrics: 100 * max(cos(image, prompt), 0)."""
        emb = self.clip.embedder
        cos = (emb.images(images) * emb.texts(prompts)).sum(-1)
        return [float(100 * max(x, 0.0)) for x in cos]

    # ---------------------------------------------------------------------------- aggregate
    def results(self) -> dict:
        rows = []
        for concept in self.config.concepts:
            for pset in self.prompt_sets(concept):
                reference = {(r["prompt_index"], r["image_index"]): r
                             for r in self.store.rows("none", concept, pset.name) if r["set_id"] == pset.id}
                for stack in self.config.defenses:
                    mine = [r for r in self.store.rows(stack, concept, pset.name) if r["set_id"] == pset.id]
                    if mine:
                        rows.append(self._aggregate(stack, concept, pset.name, mine, reference))
            for stack in self.config.defenses:  # each stack's own adversarial sets
                for pset in self.attack_sets(stack, concept):
                    mine = [r for r in self.store.rows(stack, concept, pset.name) if r["set_id"] == pset.id]
                    if mine:
                        rows.append(self._aggregate(stack, concept, pset.name, mine, {}))
        judges = {"concept_rate": self.oracle.describe() if self.oracle else
                  (self.clip.describe() if self.clip else None)}
        if self.clip:
            judges["clip_accuracy"] = self.clip.describe() + " - not independent of CLIP-based filters"
            judges["normalized_clip_score"] = "CLIP score (100 * cos) vs the undefended model, same prompts and seeds"
        if self.oracle:
            judges["prompt_following"] = "oracle labels match every attribute the prompt names"
            judges["fd"] = "Frechet distance on oracle features vs the undefended model"
        out = {"config": self.config.model_dump(), "rows": rows, "judges": judges}
        if self.config.attacks:
            out["attacks"] = self.attack_costs()
            out["certificates"] = self.certificates()
        return out

    def certificates(self) -> list[dict]:
        """Espresso's certified radii next to the embedding shifts the attacks caused.

        For every stack with an Espresso filter and every concept: the filter's radius on the
        undefended model's images of `unacceptable` prompts (truth: the oracle), and for each
        attack the shift ||x_adv - x_clean|| of the CLIP embedding between the image the filter
        saw for adversarial prompt i and the clean image for prompt i (same seed).
        """
        from conceptguard.defenses.espresso import EspressoFilter

        out = []
        for stack in self.config.defenses:
            if not any(p.startswith("espresso") for p in stack.split("+")):
                continue
            for concept in self.config.concepts:
                clean_set = miniworld_set(concept, "unacceptable", self.config.prompts_per_set, seed=self.config.seed) \
                    if "unacceptable" in self.config.prompt_sets else None
                clean = [r for r in self.store.rows("none", concept, "unacceptable")
                         if clean_set is not None and r["set_id"] == clean_set.id]
                attack_sets = self.attack_sets(stack, concept)
                if not clean or not attack_sets or self.oracle is None:
                    continue
                filt = self.guard(stack, concept).of_kind(EspressoFilter)[0]
                truth = [bool(r["judges"]["oracle"]["present"]) for r in clean]
                cert = filt.certify(self._images(clean), truth, concept)
                x_clean = filt.embedder.images(self._images(clean))
                by_index = {(r["prompt_index"], r["image_index"]): j for j, r in enumerate(clean)}
                good = cert["correct"] & np.asarray(truth)
                base = {"defense": stack, "concept": concept, "n_clean": len(clean),
                        "clean_accuracy": round(float(cert["correct"].mean()), 4),
                        "mean_radius": round(float(cert["radius"][good].mean()), 4) if good.any() else None}
                for pset in attack_sets:
                    adv = [r for r in self.store.rows(stack, concept, pset.name) if r["set_id"] == pset.id
                           and (r["prompt_index"], r["image_index"]) in by_index and not _prompt_blocked(r)]
                    if not adv:
                        continue
                    pair = [by_index[(r["prompt_index"], r["image_index"])] for r in adv]
                    shift = (filt.embedder.images(self._images(adv, unfiltered=True)) - x_clean[pair]).norm(dim=-1).numpy()
                    beyond = shift > cert["radius"][pair]
                    out.append({**base, "attack": pset.name.removeprefix("adversarial-"), "n_adversarial": len(adv),
                                "mean_shift": round(float(shift.mean()), 4),
                                "beyond_radius": round(float(beyond.mean()), 4)})
        return out

    def _images(self, rows: list[dict], unfiltered: bool = False) -> list[Image.Image]:
        paths = [(r["record"].get("unfiltered_image") if unfiltered else None) or r["image"] for r in rows]
        return [Image.open(self.out / p).convert("RGB") for p in paths]

    def _aggregate(self, stack: str, concept: str, set_name: str, mine: list[dict], reference: dict) -> dict:
        blocked = [r["blocked"] for r in mine]
        main = "oracle" if self.oracle else "clip"
        present = [bool(r["judges"][main]["present"]) for r in mine]
        row = {"defense": stack, "concept": concept, "prompt_set": set_name, "n_images": len(mine),
               "concept_rate": metrics.concept_rate(present, blocked), "clip_accuracy": None,
               "block_rate": metrics.block_rate(blocked), "normalized_clip_score": None,
               "prompt_following": None, "fd": None, "seconds": round(sum(r["seconds"] for r in mine), 3)}
        if self.clip:
            row["clip_accuracy"] = metrics.clip_accuracy([r["judges"]["clip"]["p"] for r in mine], blocked)
        if set_name == "acceptable":
            if self.oracle:
                from conceptguard.miniworld.oracle import labels_match

                row["prompt_following"] = metrics.prompt_following(
                    [labels_match(r["judges"]["oracle"], r["expected"]) for r in mine], blocked)
            pairs = [(r, reference.get((r["prompt_index"], r["image_index"]))) for r in mine]
            pairs = [(r, ref) for r, ref in pairs if ref is not None]
            if self.clip and pairs:
                row["normalized_clip_score"] = metrics.normalized_clip_score(
                    [r["judges"]["clip"]["score"] for r, _ in pairs], [ref["judges"]["clip"]["score"] for _, ref in pairs],
                    [r["blocked"] for r, _ in pairs])
            if self.oracle and pairs and stack != "none":
                row["fd"] = metrics.frechet_distance(self._features([r for r, _ in pairs]),
                                                     self._features([ref for _, ref in pairs]))
            elif self.oracle and stack == "none":
                row["fd"] = 0.0
        return {k: (round(v, 4) if isinstance(v, float) and np.isfinite(v) else v) for k, v in row.items()}

    def _features(self, rows: list[dict]) -> np.ndarray:
        return self.oracle.features(self._images(rows))


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    image.save(tmp)
    os.replace(tmp, path)  # a killed run never leaves half an image under the final name


def _prompt_blocked(row: dict) -> bool:
    """Blocked before any image was made (a prompt filter): nothing for a certificate to judge."""
    return row["blocked"] and not row["record"].get("unfiltered_image") and any(
        d["blocked"] and d["kind"] == "prompt_filter" for d in row["record"]["decisions"])
