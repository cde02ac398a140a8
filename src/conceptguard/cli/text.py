"""`conceptguard explain`: why an embedding defense (Embedding Sanitizer, SteerDiff) acts on a
prompt. (Their training is `conceptguard train sanitizer|steerdiff`.)"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from conceptguard.cli.common import app, emit_json
from conceptguard.errors import InvalidInputError


@app.command("explain")
def explain_cmd(prompt: str = typer.Argument(..., help="The prompt to explain."),
                sanitizer: Optional[Path] = typer.Option(None, "--sanitizer",
                                                         help="A folder from `conceptguard train sanitizer`."),
                steerdiff: Optional[Path] = typer.Option(None, "--steerdiff",
                                                         help="A folder from `conceptguard train steerdiff`."),
                model: Optional[str] = typer.Option(None, "--model",
                                                    help="Pipeline whose text encoder to use (default: the mini SD)."),
                as_json: bool = typer.Option(False, "--json", help="Print as JSON (a span's `start`/`end` index the "
                                             "token ids, 0 being the start token, `end` excluded as in a slice).")) -> None:
    """Show why an embedding defense acts on a prompt: per-token harmfulness scores (sanitizer) or
    flagged spans (SteerDiff)."""
    from conceptguard.generation import check_prompt
    from conceptguard.models import load_pipeline

    if (sanitizer is None) == (steerdiff is None):
        raise InvalidInputError("give exactly one of --sanitizer DIR or --steerdiff DIR")
    folder = sanitizer or steerdiff
    assert folder is not None
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
            emit_json({"prompt": prompt, "tokens": rows})
            return
        Console().print(word_table(rows, ", ".join(defense.config["concepts"])))
        return
    from conceptguard.defenses.steerdiff import SteerDiff

    steer = SteerDiff.from_pretrained(folder)
    steer.check_encoder(pipe.text_encoder, pipe.tokenizer)
    spans = steer.identify(prompt, pipe.text_encoder, pipe.tokenizer)
    if as_json:
        emit_json({"prompt": prompt, "flagged": bool(spans), "spans": spans})
        return
    table = Table(title=f"flagged spans (threshold {steer.threshold})")
    table.add_column("span")
    table.add_column("token positions")
    table.add_column("score")
    for s in spans:
        table.add_row(s["text"], f"{s['start']}-{s['end'] - 1}", f"{s['score']:.3f}")
    if not spans:
        Console().print("no span flagged: the prompt is left unchanged")
        return
    Console().print(table)
    Console().print("token positions: 1 is the prompt's first token; both ends included")


def word_table(rows: list[dict], concepts: str) -> Table:
    """The sanitizer's scores per word of the prompt: a word split into BPE pieces scores its
    highest piece, and lists the pieces with their own scores."""
    table = Table(title=f"harmfulness per word ({concepts})")
    table.add_column("word")
    table.add_column("score")
    table.add_column("BPE pieces")
    for k in dict.fromkeys(r["word_index"] for r in rows):
        pieces = [r for r in rows if r["word_index"] == k]
        top = max(r["score"] for r in pieces)
        score = f"{top:.3f}"
        table.add_row(pieces[0]["word"], f"[red]{score}" if top >= 0.5 else score,
                      "  ".join(f"{r['token']} {r['score']:.3f}" for r in pieces) if len(pieces) > 1 else "")
    return table
