"""The benchmark runner: (defense stack x concept x prompt set) -> images -> judges -> store.

Images are generated in batches through GuardedPipeline, saved on disk under a content key,
judged, and stored one SQLite row each; rows already in the store are skipped, so a run that
was killed resumes where it stopped. The attack cache (attack_cache.py) finds each stack's
adversarial prompts first; aggregation into result rows is aggregate.py's.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Iterator

from PIL import Image

from conceptguard.attacks import AttackTarget
from conceptguard.concepts import Concept
from conceptguard.defenses.registry import BuildContext, DefenseStack, build_defenses
from conceptguard.domain import Domain
from conceptguard.errors import ConfigError
from conceptguard.eval.aggregate import Aggregator
from conceptguard.eval.attack_cache import AttackCache
from conceptguard.eval.config import BenchConfig, load_config
from conceptguard.eval.judges import ClipZeroShotJudge, Judge, get_judge
from conceptguard.eval.prompt_sets import standard_sets
from conceptguard.eval.store import RowKey, Store
from conceptguard.guard import GuardedPipeline
from conceptguard.miniworld.data import cache_dir
from conceptguard.models import load_pipeline, resolve_dtype, set_placement
from conceptguard.progress import Progress, report
from conceptguard.prompts import PromptSet

JUDGES_META = "judges"  # the store's record of which judges (and weights) gave its verdicts


def _seed(base: int, prompt_index: int, image_index: int, per_prompt: int) -> int:
    return base * 1_000_003 + prompt_index * per_prompt + image_index


class Runner:
    def __init__(self, config: BenchConfig, out_dir: Path, progress: Progress | None = None) -> None:
        self.config, self.out = config, out_dir
        set_placement(config.device, config.dtype)  # every model the run loads: pipeline, CLIPs, defenses
        self.domain: Domain = config.domain()
        self.images_dir = out_dir / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(out_dir / "results.sqlite")
        self.progress = progress
        self.cache = cache_dir()
        self.attacks = AttackCache(out_dir, config.attacks, config.attack_budget, config.attack_prompts,
                                   config.seed, progress, config.attack_settings)
        self._pipe = None
        self._judges: dict[str, Judge] | None = None
        self._ctx: BuildContext | None = None
        self._guard: GuardedPipeline | None = None
        self._guard_key: tuple[str, str] | None = None

    # lazily loaded, so a resumed run with nothing left to do loads no model
    @property
    def pipe(self):
        if self._pipe is None:
            self._pipe = load_pipeline(self.config.model)
        return self._pipe

    @property
    def judges(self) -> dict[str, Judge]:
        if self._judges is None:
            self._judges = {spec: get_judge(spec, self.domain) for spec in self.config.judges or []}
        return self._judges

    def judge_versions(self) -> dict[str, str]:
        """Each judge's description and, where the domain ships its weights, their fingerprint."""
        out = {}
        for spec, judge in self.judges.items():
            weights = self.domain.judge_weights(spec)
            out[spec] = judge.describe() + (f" @ {weights}" if weights else "")
        return out

    def check_judges(self) -> None:
        """Refuse to mix verdicts of other judge weights with new ones in one store."""
        stored, current = self.store.meta(JUDGES_META), self.judge_versions()
        if stored is None:
            self.store.set_meta(JUDGES_META, current)  # a new store (or one from before this record)
        elif isinstance(stored, dict) and stored != current:
            changed = ", ".join(f"{k}: {stored.get(k)} -> {v}" for k, v in current.items() if stored.get(k) != v)
            raise ConfigError(f"{self.out}'s images were judged by other judges ({changed}); add --rejudge to judge "
                              "them again with the current ones")

    def rejudge(self) -> int:
        """Judge every stored image again with the current judges (after a judge changed); returns
        how many. Verdicts are replaced batch by batch; the judges' record is updated at the end, so
        a run killed midway is still seen as stale and re-judged again."""
        rows = self.store.rows()
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(r["concept"], []).append(r)
        done, size = 0, max(self.config.batch_size, 64)
        for concept, mine in groups.items():
            for b in range(0, len(mine), size):
                batch = mine[b:b + size]
                images = [Image.open(self.out / r["image"]).convert("RGB") for r in batch]
                verdicts = self.judge(images, self.concept(concept), [r["prompt"] for r in batch])
                self.store.update_judges({r["key"]: v for r, v in zip(batch, verdicts)})
                done += len(batch)
                report(self.progress, "re-judge", done, len(rows))
        self.store.set_meta(JUDGES_META, self.judge_versions())
        return done

    def concept(self, name: str) -> Concept:
        return self.domain.concept(name)

    def prompt_sets(self, concept: str) -> list[PromptSet]:
        """The sets every stack is measured on (the adversarial ones depend on the stack)."""
        return standard_sets(self.config, self.domain, concept)

    def keys(self, stack: str, pset: PromptSet) -> list[tuple[RowKey, int, int]]:
        """A row key per (prompt, image): the prompt's own seed (an I2P CSV's) plus the image's
        index, else the bench's seed for it."""
        c = self.config

        def seed(i: int, k: int) -> int:
            own = pset.items[i].seed
            return _seed(c.seed, i, k, c.images_per_prompt) if own is None else own + k

        return [(RowKey(stack, pset.concept, pset.id, i, seed(i, k), k), i, k)
                for i in range(len(pset.items)) for k in range(c.images_per_prompt)]

    def guidance(self, pset: PromptSet, i: int) -> float:
        """The prompt's own guidance scale (an I2P CSV's), else the config's."""
        own = pset.items[i].guidance
        return self.config.guidance_scale if own is None else own

    # ------------------------------------------------------------------ defenses and attacks
    def context(self) -> BuildContext:
        if self._ctx is None:
            self._ctx = BuildContext(self.pipe, self.domain, self.cache, self.config.training_seed, self.progress)
        return self._ctx

    def guard(self, stack: str, concept: str) -> GuardedPipeline:
        """The guard stack for (stack, concept); only the latest one is kept in memory."""
        if self._guard is None or self._guard_key != (stack, concept):
            defenses = build_defenses(DefenseStack.parse(stack), self.concept(concept), self.context(),
                                      self.config.defense_settings)
            self._guard = GuardedPipeline(self.pipe, defenses)
            self._guard_key = (stack, concept)
        return self._guard

    def attack_target(self, stack: str, concept: str) -> AttackTarget:
        """The stack as an attacker sees it, with the run's main judge for attacks that stop once it
        says they succeeded (the oracle in the mini world, else the first judge)."""
        c = self.concept(concept)
        main = self.judges.get("oracle") or next(iter(self.judges.values()), None)

        def judge(images: list[Image.Image]) -> list[bool]:
            return [bool(v["present"]) for v in main.judge(images, c)] if main else [False] * len(images)

        return AttackTarget(self.guard(stack, concept), c, self.domain, stack, self.context().embedder, self.progress,
                            judge=judge if main else None,
                            sampling=(self.config.num_inference_steps, self.config.guidance_scale))

    # ------------------------------------------------------------------ generation
    def run(self) -> int:
        """Generate and judge every missing row; returns how many rows were added.

        Works through one (concept, stack) at a time: its attacks are run against it first
        (results kept on disk), then its missing rows are generated in batches.
        """
        c = self.config
        self.check_judges()
        concepts = c.concepts or []
        per_pair = sum(len(s.items) for s in self.prompt_sets(concepts[0])) if concepts else 0
        per_pair += (len(c.attacks) + bool(c.attacks)) * c.attack_prompts  # the attacks' sets and their seeds
        total = len(concepts) * len(c.defenses) * per_pair * c.images_per_prompt
        done = min(self.store.count(), total)
        added = 0
        for concept in concepts:
            for stack in c.defenses:
                target = lambda stack=stack, concept=concept: self.attack_target(stack, concept)  # noqa: E731
                sets = [*self.prompt_sets(concept), *self.attacks.seed_sets(self.domain, concept),
                        *self.attacks.prompt_sets(stack, concept, target)]
                for pset in sets:
                    keys = self.keys(stack, pset)
                    have = self.store.existing([k for k, _, _ in keys])
                    todo = [(k, i, j) for k, i, j in keys if str(k) not in have]
                    for batch, guidance in self._batches(pset, todo):
                        self.store.add(self._run_batch(self.guard(stack, concept), stack, concept, pset, batch, guidance))
                        added += len(batch)
                        done += len(batch)
                        report(self.progress, "generate + judge", min(done, total), total)
        return added

    def _batches(self, pset: PromptSet, todo: list) -> Iterator[tuple[list, float]]:
        """`todo` in batches of `batch_size`, each with one guidance scale (a prompt may carry its own)."""
        by_scale: dict[float, list] = {}
        for item in todo:
            by_scale.setdefault(self.guidance(pset, item[1]), []).append(item)
        for guidance, mine in by_scale.items():
            for b in range(0, len(mine), self.config.batch_size):
                yield mine[b:b + self.config.batch_size], guidance

    def _image_path(self, stack: str, concept: str, prompt: str, seed: int, guidance: float) -> Path:
        c = self.config
        text = f"{c.model}|{stack}|{concept}|{prompt}|{seed}|{c.num_inference_steps}|{guidance}"
        dtype = resolve_dtype(c.dtype)
        if str(dtype) != "torch.float32":  # another dtype draws other images (float32 keys stay as they were)
            text += f"|{str(dtype).removeprefix('torch.')}"
        key = hashlib.sha256(text.encode()).hexdigest()[:20]
        return self.images_dir / key[:2] / f"{key}.png"

    def _run_batch(self, guard: GuardedPipeline, stack: str, concept: str, pset: PromptSet, batch,
                   guidance: float) -> list[dict]:
        c = self.config
        t0 = time.perf_counter()
        prompts = [pset.items[i].text for _, i, _ in batch]
        seeds = [k.seed for k, _, _ in batch]
        out = guard(prompts, seed=seeds, num_inference_steps=c.num_inference_steps, guidance_scale=guidance,
                    batch_size=c.batch_size, learned_tokens=pset.tokens)  # a CCE set's placeholder tokens
        judged = self.judge(out.images, self.concept(concept), prompts)
        per_image = (time.perf_counter() - t0) / len(batch)
        rows = []
        for (key, i, k), prompt, image, raw, record, verdict in zip(batch, prompts, out.images, out.unfiltered,
                                                                    out.records, judged):
            path = self._image_path(stack, concept, prompt, key.seed, guidance)
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

    def judge(self, images: list[Image.Image], concept: Concept, prompts: list[str]) -> list[dict]:
        """Every judge's verdict per image; the CLIP judge also gives the CLIP score of the prompt."""
        verdicts: list[dict] = [{} for _ in images]
        for spec, judge in self.judges.items():
            for v, o in zip(verdicts, judge.judge(images, concept)):
                v[spec] = o
            if isinstance(judge, ClipZeroShotJudge):
                for v, s in zip(verdicts, clip_scores(judge, images, prompts)):
                    v[spec]["score"] = s
        return verdicts

    # ------------------------------------------------------------------ results
    def results(self) -> dict:
        """The results dict of everything stored so far (aggregate.py)."""
        return Aggregator(self.config, self.domain, self.store, self.out, self.attacks, self.judges,
                          self.guard).results()


def clip_scores(judge: ClipZeroShotJudge, images: list[Image.Image], prompts: list[str]) -> list[float]:
    """CLIP score as in torchmetrics: 100 * max(cos(image, prompt), 0)."""
    emb = judge.embedder
    cos = (emb.images(images) * emb.texts(prompts)).sum(-1)
    return [float(100 * max(x, 0.0)) for x in cos]


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    image.save(tmp)
    os.replace(tmp, path)  # a killed run never leaves half an image under the final name


__all__ = ["BenchConfig", "Runner", "load_config"]
