"""`conceptguard world ...`: render, train, check and inspect the mini world."""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from conceptguard.cli.common import console, emit_json, out_dir, plural, progress_bar, read_images, reporter, world_app
from conceptguard.errors import InvalidInputError


def _concept_scene(name: str) -> dict:
    """Scene attributes that make a concept visible (raises UnknownConceptError)."""
    from conceptguard.miniworld.world import world_concept

    wc = world_concept(name)
    fixed: dict = {"texture": "rings"} if wc.mark == "rings" else {wc.mark: True}
    if wc.shape:
        fixed["shape"] = wc.shape
    return fixed


@world_app.command("render")
def world_render(out: Path = typer.Option(..., "--out", help="Folder for images/*.png, captions.json, captions.csv "
                                          "and contact_sheet.png."),
                 n: int = typer.Option(32, "--n", min=1, max=10000, help="How many scenes."),
                 seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same renders)."),
                 concept: Optional[str] = typer.Option(None, "--concept",
                                                       help="Only scenes that show this concept (e.g. burning).")) -> None:
    """Render random scenes with captions and a contact sheet: the mini world's COCO. captions.csv
    (file, caption) is a prompt file (name it `acceptable` in a bench config) and images/ the real
    images for its FID (`fid_reference`)."""
    import numpy as np
    from PIL import Image

    from conceptguard.miniworld.render import contact_sheet, render
    from conceptguard.miniworld.scene import sample_scene
    from conceptguard.miniworld.world import caption

    fixed = _concept_scene(concept) if concept else {}
    out = out_dir(out)
    images: list = []
    records: list[dict] = []
    # written to a scratch folder and moved into `out` once complete: an interrupted run leaves nothing
    with tempfile.TemporaryDirectory(dir=out, prefix=".render-") as scratch, progress_bar() as bar:
        (Path(scratch) / "images").mkdir()
        task = bar.add_task("rendering", total=n, info="")
        for i in range(n):
            rng = np.random.default_rng([seed, i])
            scene = sample_scene(rng, allow_heldout=True, **fixed)
            image = render(scene, rng)
            text = caption(scene, rng)
            Image.fromarray(image).save(Path(scratch) / "images" / f"{i:05d}.png")
            images.append(image)
            records.append({"file": f"images/{i:05d}.png", "caption": text, "labels": scene.labels()})
            bar.advance(task)
        (Path(scratch) / "captions.json").write_text(json.dumps(records, indent=1) + "\n")
        with open(Path(scratch) / "captions.csv", "w", newline="") as table:
            csv.writer(table).writerows([("file", "caption"), *((r["file"], r["caption"]) for r in records)])
        contact_sheet(images[:64], [r["caption"] for r in records[:64]]).save(Path(scratch) / "contact_sheet.png")
        if (out / "images").is_dir():  # a folder rendered before: its images are replaced, not mixed in
            shutil.rmtree(out / "images")
        for f in sorted(Path(scratch).iterdir()):
            os.replace(f, out / f.name)
    console.print(f"wrote {plural(n, 'render')} to {out / 'images'}, captions.json, captions.csv and contact_sheet.png")


@world_app.command("train")
def world_train(seed: int = typer.Option(0, "--seed", help="Training seed (deterministic per seed)."),
                only: Optional[str] = typer.Option(None, "--only", help="Train one model: clip, vae, unet or oracle."),
                root: Optional[Path] = typer.Option(None, "--root", help="Weights folder to write (default: the shipped one)."),
                device: str = typer.Option("cpu", "--device", help="Where to train: cpu, cuda or cuda:N. The batches are "
                                           "the same on every device; the arithmetic is the device's own."),
                workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Processes that build batches ahead of "
                                                      "the model (default: 0 on the CPU, up to 8 on a GPU).")) -> None:
    """Train the mini models (all, or --only one). Resumes from the last checkpoint if interrupted."""
    import os

    import torch

    from conceptguard.miniworld import paths
    from conceptguard.miniworld.train import STAGES, Device, train_world

    if only is not None and only not in STAGES:
        raise InvalidInputError(f"--only must be one of {', '.join(STAGES)}, not {only!r}")
    if device != "cpu":
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as exc:
            raise InvalidInputError(f"--device {device}: not usable here ({str(exc).splitlines()[0]})") from None
    if workers is None:
        workers = 0 if device == "cpu" else min(8, max(0, (os.cpu_count() or 1) - 2))
    with progress_bar() as bar:
        report = reporter(bar)
        times = train_world(seed=seed, only=only, report=report, root=root or paths.WEIGHTS_DIR,
                            device=Device(device, workers), data_progress=report)
    for stage, seconds in times.items():
        console.print(f"{stage}: {seconds / 60:.1f} min")


@world_app.command("check")
def world_check(as_json: bool = typer.Option(False, "--json", help="Print the measurements as JSON."),
                seed: int = typer.Option(1, "--seed", help="Seed for the fresh renders and generations."),
                quick: bool = typer.Option(False, "--quick", help="Small samples (a smoke test, not the gates)."),
                write: bool = typer.Option(False, "--write", help="Store the measurement as the shipped one "
                                           "(weights/gates.json, which `world info` and docs/miniworld.md report); "
                                           "for maintainers after retraining. Not with --quick.")) -> None:
    """Measure every quality gate of the mini world on fresh seeds (prints them; writes nothing
    unless --write)."""
    from conceptguard.miniworld.gates import QUICK, Sizes, check

    if write and quick:
        raise InvalidInputError("--write stores the full measurement; drop --quick")
    with progress_bar() as bar:
        result = check(seed=seed, sizes=QUICK if quick else Sizes(), save=write, progress=reporter(bar))
    if as_json:
        emit_json(result)
        return
    table = Table(title=f"mini world gates (seed {seed}, {result['seconds']} s)")
    for col in ("gate", "value", "threshold", "n", "ok"):
        table.add_column(col)
    for name, g in result["gates"].items():
        table.add_row(name, f"{g['value']:.3f}", f"{g['threshold']:.2f}", str(g["n"]),
                      "[green]yes" if g["passed"] else "[red]NO")
    Console().print(table)


@world_app.command("info")
def world_info(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Where the shipped models are, the concepts with their phrasings, the last measured gates."""
    from conceptguard.miniworld.domain import MiniWorld
    from conceptguard.miniworld.gates import last_measured
    from conceptguard.miniworld.paths import clip_dir, oracle_dir, pipeline_dir

    info: dict[str, Any] = {"pipeline": str(pipeline_dir()), "clip": str(clip_dir()), "oracle": str(oracle_dir()),
            "concepts": [c.info() for c in MiniWorld().concepts], "gates": last_measured()}
    if as_json:
        emit_json(info)
        return
    out = Console()
    out.print(f"pipeline: {info['pipeline']}\nclip:     {info['clip']}\noracle:   {info['oracle']}")
    table = Table(title="concepts")
    for col in ("name", "group", "c_u + synonyms", "c_a", "held-out phrasings"):
        table.add_column(col)
    for c in info["concepts"]:
        table.add_row(c["name"], str(c["group"]), ", ".join(c["unacceptable"]), c["acceptable"],
                      ", ".join(c["heldout_phrasings"]))
    out.print(table)
    gates = info["gates"].get("gates", {})
    out.print(f"gates: {sum(g['passed'] for g in gates.values())}/{len(gates)} passed when last measured"
              if gates else "gates: never measured (run `conceptguard world check`)")


@world_app.command("judge")
def world_judge(images: list[Path] = typer.Argument(..., metavar="IMAGE", help="Image files (any size; resized to 32x32)."),
                as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """The oracle's attribute labels and concept probabilities for each image."""
    from conceptguard.models import load_oracle

    pictures = read_images(images)  # bad input fails before any model is loaded
    results = load_oracle().judge(pictures)
    rows = [{"image": str(p), **r} for p, r in zip(images, results)]
    if as_json:
        emit_json(rows)
        return
    table = Table(title="oracle")
    for col in ("image", "shape", "color", "texture", "background", "size", "concepts (p > 0.5)"):
        table.add_column(col)
    for r in rows:
        shown = ", ".join(f"{c} {p:.2f}" for c, p in r["concepts"].items() if p > 0.5) or "-"
        table.add_row(r["image"], r["shape"], r["color"], r["texture"], r["background"], r["size"], shown)
    Console().print(table)
