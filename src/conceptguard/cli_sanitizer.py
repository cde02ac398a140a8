"""The embedding defenses' commands: `train sanitizer`, `train steerdiff` and `explain`
(registered on the main CLI)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from conceptguard.cli import _emit_json, _out_dir, _progress, app, console, train_app
from conceptguard.errors import InvalidInputError


def _concepts(names: str):
    from conceptguard.concepts import get_concept

    parts = [n.strip() for n in names.split(",") if n.strip()]
    if not parts:
        raise InvalidInputError("give at least one concept")
    return [get_concept(n) for n in parts]


@train_app.command("sanitizer")
def train_sanitizer_cmd(concept: str = typer.Option(..., "--concept", help="Concept(s) to sanitize, comma-separated."),
                        out: Path = typer.Option(..., "--out", help="Folder to save the sanitizer in."),
                        model: Optional[str] = typer.Option(None, "--model", help="Pipeline whose text encoder it serves (default: the mini SD)."),
                        steps: int = typer.Option(600, "--steps", min=1),
                        seed: int = typer.Option(0, "--seed")) -> None:
    """Train the Embedding Sanitizer from text alone: prompts with the concept, their anchor twins
    (the acceptable counterpart instead) and benign prompts."""
    from conceptguard.defenses.sanitizer import SanitizerConfig, train_sanitizer
    from conceptguard.models import load_pipeline

    concepts = _concepts(concept)
    out = _out_dir(out)
    pipe = load_pipeline(model)
    t0 = time.time()
    with _progress() as bar:
        task = bar.add_task(f"sanitizer {','.join(c.name for c in concepts)}", total=steps, info="")
        defense = train_sanitizer(concepts, pipe.text_encoder, pipe.tokenizer, SanitizerConfig(steps=steps, seed=seed),
                                  progress=lambda i, n, loss: bar.update(task, completed=i, info=f"loss {loss:.4f}"),
                                  encoder_name=model or "miniworld")
    defense.save_pretrained(out)
    console.print(f"sanitizer for {', '.join(c.name for c in concepts)}: trained in {time.time() - t0:.1f} s, saved to {out}")


@train_app.command("steerdiff")
def train_steerdiff_cmd(concept: str = typer.Option(..., "--concept", help="Concept(s) to steer away from, comma-separated."),
                        out: Path = typer.Option(..., "--out", help="Folder to save SteerDiff in."),
                        model: Optional[str] = typer.Option(None, "--model", help="Pipeline whose text encoder it serves (default: the mini SD)."),
                        epochs: int = typer.Option(30, "--epochs", min=1),
                        seed: int = typer.Option(0, "--seed")) -> None:
    """Train SteerDiff: the window identifier (MLP) and the affine steering map (least squares)."""
    from conceptguard.defenses.steerdiff import SteerDiffConfig, train_steerdiff
    from conceptguard.models import load_pipeline

    concepts = _concepts(concept)
    out = _out_dir(out)
    pipe = load_pipeline(model)
    t0 = time.time()
    with _progress() as bar:
        task = bar.add_task(f"steerdiff {','.join(c.name for c in concepts)}", total=1, info="")
        steer = train_steerdiff(concepts, pipe.text_encoder, pipe.tokenizer, SteerDiffConfig(epochs=epochs, seed=seed),
                                progress=lambda i, n, loss: bar.update(task, completed=i, total=n, info=f"loss {loss:.4f}"),
                                encoder_name=model or "miniworld")
    steer.save_pretrained(out)
    console.print(f"steerdiff for {', '.join(c.name for c in concepts)}: trained in {time.time() - t0:.1f} s, saved to {out}")


@app.command("explain")
def explain_cmd(prompt: str = typer.Argument(..., help="The prompt to explain."),
                sanitizer: Optional[Path] = typer.Option(None, "--sanitizer", help="A folder from `train sanitizer`."),
                steerdiff: Optional[Path] = typer.Option(None, "--steerdiff", help="A folder from `train steerdiff`."),
                model: Optional[str] = typer.Option(None, "--model", help="Pipeline whose text encoder to use (default: the mini SD)."),
                as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Show why an embedding defense acts on a prompt: per-token harmfulness scores (sanitizer) or
    flagged spans (SteerDiff)."""
    from conceptguard.generation import check_prompt
    from conceptguard.models import load_pipeline

    if (sanitizer is None) == (steerdiff is None):
        raise InvalidInputError("give exactly one of --sanitizer DIR or --steerdiff DIR")
    folder = sanitizer or steerdiff
    if not folder.is_dir():
        raise InvalidInputError(f"folder not found: {folder}")
    pipe = load_pipeline(model)
    check_prompt(prompt, pipe.tokenizer)
    if sanitizer is not None:
        from conceptguard.defenses.sanitizer import SanitizerDefense

        defense = SanitizerDefense.from_pretrained(sanitizer)
        defense.check_encoder(pipe.text_encoder, pipe.tokenizer)
        rows = defense.explain(prompt, pipe.text_encoder, pipe.tokenizer)
        if as_json:
            _emit_json({"prompt": prompt, "tokens": rows})
            return
        table = Table(title=f"harmfulness per token ({', '.join(defense.config['concepts'])})")
        table.add_column("token")
        table.add_column("score")
        for r in rows:
            style = "red" if r["score"] >= 0.5 else ""
            table.add_row(r["token"], f"[{style}]{r['score']:.3f}" if style else f"{r['score']:.3f}")
        Console().print(table)
        return
    from conceptguard.defenses.steerdiff import SteerDiff

    steer = SteerDiff.from_pretrained(steerdiff)
    steer.check_encoder(pipe.text_encoder, pipe.tokenizer)
    spans = steer.identify(prompt, pipe.text_encoder, pipe.tokenizer)
    if as_json:
        _emit_json({"prompt": prompt, "flagged": bool(spans), "spans": spans})
        return
    table = Table(title=f"flagged spans (threshold {steer.threshold})")
    table.add_column("span")
    table.add_column("tokens")
    table.add_column("score")
    for s in spans:
        table.add_row(s["text"], f"{s['start']}-{s['end']}", f"{s['score']:.3f}")
    Console().print(table if spans else "no span flagged: the prompt is left unchanged")
