"""User prompt sources for the bench: text and CSV files, and folders saved by `conceptguard attack`."""

from __future__ import annotations

from pathlib import Path

from conceptguard.attacks import AttackResult
from conceptguard.domain import Domain
from conceptguard.eval.config import BenchConfig
from conceptguard.prompts import PromptSet, read_prompt_file


def standard_sets(config: BenchConfig, domain: Domain, concept: str) -> list[PromptSet]:
    """The sets every stack is measured on for a concept: the domain's built-in sets named in the
    config, then the user's files (the adversarial sets depend on the stack: AttackCache)."""
    c = domain.concept(concept)
    sets = [domain.prompt_set(c, name, config.prompts_per_set, seed=config.seed) for name in config.prompt_sets or []]
    sets += [load_prompt_file(config.prompt_file(name, c.name), c.name, name, config.prompt_categories(name))
             for name in config.prompt_files]
    return sets


def load_prompt_file(path: str | Path, concept: str, name: str | None = None,
                     categories: list[str] | None = None) -> PromptSet:
    """Prompts from a .txt file (one per line), a .csv file (its `prompt` column, else the first column),
    or a folder saved by `conceptguard attack` (its prompts and learned tokens)."""
    path = Path(path)
    if path.is_dir() and (path / "result.json").is_file():
        found = AttackResult.load(path).prompt_set()
        return PromptSet(name or found.name, concept, found.items, found.tokens)
    return read_prompt_file(path, concept, name, categories)
