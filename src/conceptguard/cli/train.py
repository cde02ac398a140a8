"""`conceptguard train METHOD --concept C --out DIR [--set key=value ...]`: one command for
every trainable defense, through the same builders the bench uses (so a defense trained here is
the one the bench measures), saved with `save_pretrained`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from conceptguard.cli.common import app, console, emit_json, out_dir, progress_bar, reporter
from conceptguard.errors import InvalidInputError

ALIASES = {"espresso": "espresso-ft"}  # earlier spellings; `esd` takes --variant


def parse_settings(items: list[str]) -> dict[str, str]:
    """`key=value` strings -> {key: value} (values are typed by the method's settings)."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"--set takes key=value, not {item!r}")
        settings[key.strip()] = value.strip()
    return settings


def method_name(method: str, variant: Optional[str]) -> str:
    if method == "esd":
        if variant not in ("x", "u"):
            raise InvalidInputError(f"--variant must be x or u, not {variant!r}")
        return f"esd-{variant}"
    if variant is not None:
        raise InvalidInputError("--variant belongs to `train esd`")
    from conceptguard.defenses.registry import TRAINABLE

    method = ALIASES.get(method, method)
    if method not in TRAINABLE:
        raise InvalidInputError(f"unknown method {method!r}; one of {', '.join(TRAINABLE)}")
    return method


@app.command("train")
def train_cmd(method: str = typer.Argument(..., help="esd-x, esd-u, uce, allbutone, sanitizer, steerdiff or "
                                           "espresso-ft (also `esd --variant x|u`, `espresso`)."),
              concept: str = typer.Option(..., "--concept", help="Concept to remove."),
              out: Path = typer.Option(..., "--out", help="Folder to save the trained defense in."),
              settings: list[str] = typer.Option([], "--set", help="Override a hyper-parameter, key=value "
                                                 "(repeat); unknown keys are answered with the method's list."),
              model: Optional[str] = typer.Option(None, "--model", help="Base pipeline (default: the mini SD)."),
              clip: Optional[str] = typer.Option(None, "--clip", help="CLIP for Espresso (default: the domain's)."),
              seed: int = typer.Option(0, "--seed", help="Training seed."),
              variant: Optional[str] = typer.Option(None, "--variant", help="With `esd`: x (cross-attention) or u."),
              as_json: bool = typer.Option(False, "--json", help="Print what was saved as JSON.")) -> None:
    """Train a defense for a concept and save it (load it with `load_defense(DIR)` or name the
    method in a bench config). Training runs once per settings; later calls reuse the cache."""
    name = method_name(method, variant)
    overrides = parse_settings(settings)  # bad input fails before any model is loaded
    from conceptguard.defenses import BuildContext, build_defenses
    from conceptguard.domains import get_domain
    from conceptguard.miniworld.data import cache_dir
    from conceptguard.models import load_pipeline

    domain = get_domain(model, clip)
    c = domain.concept(concept)
    out = out_dir(out)
    pipe = load_pipeline(model)
    t0 = time.time()
    with progress_bar() as bar:
        ctx = BuildContext(pipe, domain, cache_dir(), seed, reporter(bar), overrides)
        [defense] = build_defenses(name, c, ctx)
    defense.save_pretrained(out)  # type: ignore[attr-defined]
    summary = {"method": name, "concept": c.name, "model": domain.model_id, "settings": overrides,
               "seconds": round(time.time() - t0, 1), "out": str(out)}
    if as_json:
        emit_json(summary)
    else:
        console.print(f"{name} for {c.name}: ready in {summary['seconds']} s, saved to {out}")
