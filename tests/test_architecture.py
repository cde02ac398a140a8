"""The layering of docs/architecture.md, checked on the source so it cannot silently rot.

Layers, lowest first: the ground floor (errors, concepts, prompts, domain, models, ... and the
mini world), defenses, guard, attacks, eval, then the boundary (cli, api). A module may import
its own layer or a lower one, never a higher one; no import cycles, function-local imports
included.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = {"defenses": 1, "guard": 2, "attacks": 3, "eval": 4, "cli": 5, "api": 5, "__main__": 5}


def layer(module: str) -> int:
    """conceptguard.<part>...: its layer's rank (the ground floor and miniworld are 0)."""
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def modules(src: Path) -> dict[str, Path]:
    out = {}
    for path in sorted((src / "conceptguard").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """Every conceptguard module `path` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] == "conceptguard"}
    return found


def graph(src: Path) -> dict[str, set[str]]:
    mods = modules(src)
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items()}


def layer_violations(g: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
                  for m, targets in g.items() for t in targets if layer(t) > layer(m))


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_layers_run_one_way():
    assert layer_violations(graph(SRC)) == []


def test_no_import_cycles():
    assert cycles(graph(SRC)) == []


def test_the_checks_catch_a_planted_violation_and_cycle(tmp_path):
    """Plant a defense that imports eval (a layer violation) and make two ground-floor modules
    import each other (a cycle): both checks must see them."""
    shutil.copytree(SRC / "conceptguard", tmp_path / "conceptguard")
    base = tmp_path / "conceptguard" / "defenses" / "base.py"
    base.write_text(base.read_text() + "\n\ndef _planted():\n    from conceptguard.eval import metrics  # noqa\n")
    concepts = tmp_path / "conceptguard" / "concepts.py"
    concepts.write_text(concepts.read_text() + "\nfrom conceptguard import domain  # noqa\n")
    g = graph(tmp_path)
    assert "conceptguard.defenses.base (layer 1) imports conceptguard.eval.metrics (layer 4)" in layer_violations(g)
    assert any({"conceptguard.concepts", "conceptguard.domain"} <= set(c) for c in cycles(g))


def test_only_the_domain_factory_names_the_mini_world():
    """Which world a model lives in is decided in one place, the domain factory
    (domains.get_domain, with the id miniworld.paths.MINIWORLD): nothing else outside
    miniworld/ spells the id."""
    spelled = {str(p.relative_to(SRC)) for p in (SRC / "conceptguard").rglob("*.py")
               if "miniworld" not in p.relative_to(SRC / "conceptguard").parts and '"miniworld"' in p.read_text()}
    assert spelled <= {"conceptguard/domains.py"}


@pytest.mark.parametrize("package", ["defenses", "miniworld"])
def test_lower_layers_never_reach_up(package):
    forbidden = {"defenses": ("eval", "attacks", "guard", "cli"),
                 "miniworld": ("defenses", "eval", "attacks", "guard", "cli")}[package]
    g = graph(SRC)
    bad = [(m, t) for m, targets in g.items() if m.startswith(f"conceptguard.{package}")
           for t in targets if t.split(".")[1] in forbidden]
    assert bad == []
