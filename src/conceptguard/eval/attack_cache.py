"""Attack results of a bench run, kept on disk under the run's folder and indexed by
(attack, stack, concept): a resumed run reuses them, and results that cannot differ (an attack
that does not depend on the target, a white-box attack on targets with the same weights) share
one folder."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from conceptguard.attacks import AttackResult, AttackTarget, get_attack
from conceptguard.domain import Domain
from conceptguard.progress import Progress, report
from conceptguard.prompts import PromptItem, PromptSet

SEED_SET = "attack-seeds"  # the prompts the attacks start from, measured on every stack


class AttackCache:
    def __init__(self, out: Path, attacks: list[str], budget: str, prompts: int, seed: int,
                 progress: Progress | None = None, settings: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.out, self.attacks, self.budget, self.prompts, self.seed = out, attacks, budget, prompts, seed
        self.progress, self.settings = progress, dict(settings or {})

    @property
    def index_path(self) -> Path:
        return self.out / "attacks" / "index.json"

    def index(self) -> dict[str, str]:
        """(attack|stack|concept) -> result folder, relative to the run's folder."""
        return json.loads(self.index_path.read_text()) if self.index_path.is_file() else {}

    def seed_sets(self, domain: Domain, concept: str) -> list[PromptSet]:
        """The prompts the attacks start from (the domain's `seed_prompts` at the run's seed and
        size), as a set every stack is measured on: the rate before any attack, and the other half
        of the cumulative ASR. Empty without attacks."""
        if not self.attacks:
            return []
        c = domain.concept(concept)
        prompts = domain.seed_prompts(c, self.prompts, self.seed)
        return [PromptSet(SEED_SET, c.name, tuple(PromptItem(p, {c.name: True}) for p in prompts))]

    def prompt_sets(self, stack: str, concept: str,
                    target: Callable[[], AttackTarget] | None = None) -> list[PromptSet]:
        """The stack's adversarial prompt sets for a concept: found against that stack (run now
        when a `target` factory is given, else only those already on disk)."""
        index, sets = self.index(), list[PromptSet]()
        for name in self.attacks:
            folder = index.get(f"{name}|{stack}|{concept}")
            if folder is None or not (self.out / folder / "result.json").is_file():
                if target is None:
                    continue
                folder = self._run(name, stack, concept, target())
            pset = AttackResult.load(self.out / folder).prompt_set()
            if all(pset.id != s.id for s in sets):  # an adaptive form with nothing to adapt to is the plain one
                sets.append(pset)
        return sets

    def _run(self, name: str, stack: str, concept: str, target: AttackTarget) -> str:
        settings = self.settings.get(name) or {}
        attack = get_attack(name, self.budget, settings)
        folder = f"attacks/{attack.cache_name(target)}"
        if settings:  # another budget finds other prompts: never mix them with the preset's
            folder += "-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
        if not (self.out / folder / "result.json").is_file():
            what = f"attack {name} {concept} @ {stack}"
            report(self.progress, what, 0, 1)
            attack.run(target, self.prompts, seed=self.seed).save(self.out / folder)
            report(self.progress, what, 1, 1)
        index = self.index()
        index[f"{name}|{stack}|{concept}"] = folder
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
        os.replace(tmp, self.index_path)
        return folder

    def costs(self) -> list[dict]:
        """What each stored attack run cost (one entry per distinct result)."""
        folders = sorted(set(self.index().values()))
        return [AttackResult.load(self.out / f).cost() for f in folders if (self.out / f / "result.json").is_file()]
