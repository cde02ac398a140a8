"""What every command shares: the Typer apps, the console, progress bars, JSON output, input checks.

Commands import the ML libraries inside their bodies: `conceptguard --help` and a command that
fails on bad input answer in a second, without loading torch, diffusers or transformers.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from typer.core import TyperArgument

from conceptguard.errors import InvalidInputError
from conceptguard.images import as_rgb, read_images  # noqa: F401  (re-exported for the commands)

app = typer.Typer(rich_markup_mode=None, help="conceptguard: keep text-to-image models from generating unacceptable concepts.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
world_app = typer.Typer(rich_markup_mode=None, help="The mini world: a tiny Stable Diffusion + CLIP trained offline on "
                        "procedural scenes, with an oracle judge.", no_args_is_help=True)
app.add_typer(world_app, name="world")

console = Console(stderr=True)


def _readable_type(display_type):
    """Typer labels a list argument "<list[Path]>", as if it took one Python list; say
    "<path>..." (one or more), as click's own help does."""
    def display(self, ctx) -> str:
        label = display_type(self, ctx)
        found = re.fullmatch(r"<list\[(\w+)\]>", label)
        return f"<{found.group(1).lower()}>..." if found else label
    return display


TyperArgument.display_type = _readable_type(TyperArgument.display_type)  # type: ignore[method-assign]


@app.callback()
def _machine(threads: Optional[int] = typer.Option(
        None, "--threads", min=1, envvar="CONCEPTGUARD_THREADS",
        help="CPU threads torch computes with (default: torch's, one per core; OMP_NUM_THREADS also sets it). "
             "Give each of several jobs on one machine its share: oversubscribed cores run 3-5x slower."),
        device: Optional[str] = typer.Option(
            None, "--device", envvar="CONCEPTGUARD_DEVICE",
            help="Where models load and compute: cpu, cuda, cuda:N or mps (default: cuda when there is one, else cpu). "
                 "A bench config's `device` overrides it."),
        dtype: Optional[str] = typer.Option(
            None, "--dtype", envvar="CONCEPTGUARD_DTYPE",
            help="The diffusion pipeline's dtype: float32 (default), float16, bfloat16 or float64 (CLIP models "
                 "stay float32). A bench config's `dtype` overrides it.")) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
    if device or dtype:
        from conceptguard.models import set_placement

        set_placement(device, dtype)


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=console, transient=False)


def reporter(bar: Progress):
    """A Progress callback (what, done, total, info) that keeps one bar per `what`; when stderr
    is not a terminal (nohup, CI) it also logs a line every 5% of each task."""
    tasks: dict[str, TaskID] = {}
    t0 = time.time()

    def progress(what: str, done: int, total: int, info: str = "") -> None:
        task = tasks.get(what)
        if task is None:
            task = tasks[what] = bar.add_task(what, total=total, info="")
        bar.update(task, completed=done, total=total, info=info)
        if not console.is_terminal and total and (done == total or done % max(1, total // 20) == 0):
            console.print(f"{what} {done}/{total} {info} elapsed {time.time() - t0:.0f}s".rstrip())
    return progress


def plural(n: int, noun: str) -> str:
    """'1 image', '2 images': counts in messages read as English."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def emit_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def out_dir(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"--out {path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def concept_names(names: str) -> list[str]:
    """Comma-separated concept names (at least one)."""
    parts = [n.strip() for n in names.split(",") if n.strip()]
    if not parts:
        raise InvalidInputError("give at least one concept")
    return parts
