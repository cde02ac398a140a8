"""The `conceptguard` command line. Every error a user can cause is one line on stderr and exit 2."""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

from conceptguard.errors import ConceptGuardError, InvalidInputError

app = typer.Typer(help="conceptguard: keep text-to-image models from generating unacceptable concepts.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
world_app = typer.Typer(help="The mini world: a tiny Stable Diffusion + CLIP trained offline on "
                        "procedural scenes, with an oracle judge.", no_args_is_help=True)
app.add_typer(world_app, name="world")

console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=console, transient=False)


def _reporter(bar: Progress):
    """A (what, done, total) callback that keeps one bar per `what` (runner, attacks, training)."""
    tasks: dict[str, int] = {}

    def progress(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = bar.add_task(what, total=total, info="")
        bar.update(tasks[what], completed=done, total=total)
    return progress


def _emit_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _out_dir(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"--out {path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------ world

def _concept_scene(name: str) -> dict:
    """Scene attributes that make a concept visible (raises UnknownConceptError)."""
    from conceptguard.miniworld.world import world_concept

    wc = world_concept(name)
    fixed: dict = {"texture": "rings"} if wc.mark == "rings" else {wc.mark: True}
    if wc.shape:
        fixed["shape"] = wc.shape
    return fixed


@world_app.command("render")
def world_render(out: Path = typer.Option(..., "--out", help="Folder for the PNGs, captions.json and contact_sheet.png."),
                 n: int = typer.Option(32, "--n", min=1, max=10000, help="How many scenes."),
                 seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same renders)."),
                 concept: Optional[str] = typer.Option(None, "--concept", help="Only scenes that show this concept (e.g. burning).")) -> None:
    """Render random scenes with captions and a contact sheet."""
    import numpy as np
    from PIL import Image

    from conceptguard.miniworld.render import contact_sheet, render
    from conceptguard.miniworld.scene import sample_scene
    from conceptguard.miniworld.world import caption

    fixed = _concept_scene(concept) if concept else {}
    out = _out_dir(out)
    images, records = [], []
    with _progress() as bar:
        task = bar.add_task("rendering", total=n, info="")
        for i in range(n):
            rng = np.random.default_rng([seed, i])
            scene = sample_scene(rng, allow_heldout=True, **fixed)
            image = render(scene, rng)
            text = caption(scene, rng)
            Image.fromarray(image).save(out / f"{i:05d}.png")
            images.append(image)
            records.append({"file": f"{i:05d}.png", "caption": text, "labels": scene.labels()})
            bar.advance(task)
    (out / "captions.json").write_text(json.dumps(records, indent=1) + "\n")
    contact_sheet(images[:64], [r["caption"] for r in records[:64]]).save(out / "contact_sheet.png")
    console.print(f"wrote {n} renders, captions.json and contact_sheet.png to {out}")


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
    from conceptguard.miniworld.train import DEFAULTS, N_TRAIN, STAGES, Device, train_world

    if only is not None and only not in STAGES:
        raise InvalidInputError(f"--only must be one of {', '.join(STAGES)}, not {only!r}")
    if device != "cpu":
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as exc:
            raise InvalidInputError(f"--device {device}: not usable here ({str(exc).splitlines()[0]})") from None
    if workers is None:
        workers = 0 if device == "cpu" else min(8, max(0, (os.cpu_count() or 1) - 2))
    t0 = time.time()
    with _progress() as bar:
        data = bar.add_task("rendering training set", total=N_TRAIN, info="")
        tasks = {s: bar.add_task(f"train {s}", total=DEFAULTS[s].steps, info="", start=False)
                 for s in (STAGES if only is None else (only,))}

        def report(stage: str, step: int, total: int, loss: float) -> None:
            if stage not in tasks:  # a second phase of a stage (clip_align)
                tasks[stage] = bar.add_task(f"train {stage}", total=total, info="")
            bar.start_task(tasks[stage])
            bar.update(tasks[stage], completed=step, total=total, info=f"loss {loss:.4f}")
            if not console.is_terminal and step % max(1, total // 20) == 0:  # a log line when run under nohup
                console.print(f"{stage} {step}/{total} loss {loss:.4f} elapsed {time.time() - t0:.0f}s")

        times = train_world(seed=seed, only=only, report=report, root=root or paths.WEIGHTS_DIR,
                            device=Device(device, workers),
                            data_progress=lambda k: bar.update(data, advance=k) if k else bar.update(data, completed=N_TRAIN))
    for stage, seconds in times.items():
        console.print(f"{stage}: {seconds / 60:.1f} min")


@world_app.command("check")
def world_check(as_json: bool = typer.Option(False, "--json", help="Print the measurements as JSON."),
                seed: int = typer.Option(1, "--seed", help="Seed for the fresh renders and generations."),
                quick: bool = typer.Option(False, "--quick", help="Small samples (a smoke test, not the gates).")) -> None:
    """Measure every quality gate of the mini world on fresh seeds."""
    from conceptguard.miniworld.gates import QUICK, Sizes, check

    with _progress() as bar:
        task = bar.add_task("measuring gates", total=2 + 2 + 15, info="")
        result = check(seed=seed, sizes=QUICK if quick else Sizes(), save=not quick,
                       progress=lambda name: bar.update(task, advance=1, info=name))
    if as_json:
        _emit_json(result)
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
    from conceptguard.concepts import miniworld_concepts
    from conceptguard.miniworld.gates import last_measured
    from conceptguard.miniworld.paths import clip_dir, oracle_dir, pipeline_dir

    info = {"pipeline": str(pipeline_dir()), "clip": str(clip_dir()), "oracle": str(oracle_dir()),
            "concepts": [c.info() for c in miniworld_concepts()], "gates": last_measured()}
    if as_json:
        _emit_json(info)
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


def _read_images(paths: list[Path]):
    from PIL import Image, UnidentifiedImageError

    images = []
    for p in paths:
        if not p.exists():
            raise InvalidInputError(f"image not found: {p}")
        if p.is_dir():
            raise InvalidInputError(f"{p} is a folder, not an image")
        try:
            with Image.open(p) as im:
                im.load()
                images.append(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise InvalidInputError(f"cannot read image {p}: {str(exc).splitlines()[0] if str(exc) else 'corrupt file'}") from exc
    return images


@world_app.command("judge")
def world_judge(images: list[Path] = typer.Argument(..., help="Image files (any size; resized to 32x32)."),
                as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """The oracle's attribute labels and concept probabilities for each image."""
    from conceptguard.models import load_oracle

    pictures = _read_images(images)  # bad input fails before any model is loaded
    results = load_oracle().judge(pictures)
    rows = [{"image": str(p), **r} for p, r in zip(images, results)]
    if as_json:
        _emit_json(rows)
        return
    table = Table(title="oracle")
    for col in ("image", "shape", "color", "texture", "background", "size", "concepts (p > 0.5)"):
        table.add_column(col)
    for r in rows:
        shown = ", ".join(f"{c} {p:.2f}" for c, p in r["concepts"].items() if p > 0.5) or "-"
        table.add_row(r["image"], r["shape"], r["color"], r["texture"], r["background"], r["size"], shown)
    Console().print(table)


# --------------------------------------------------------------------------------- generate

@app.command("generate")
def generate_cmd(prompt: str = typer.Argument(..., help="The text prompt."),
                 out: Path = typer.Option(..., "--out", help="Folder for the PNG files."),
                 model: Optional[str] = typer.Option(None, "--model", help="Hub id or local folder of a diffusers text-to-image pipeline (default: the mini SD)."),
                 n: int = typer.Option(4, "--n", min=1, max=1000, help="Images to make."),
                 seed: int = typer.Option(0, "--seed", help="Seed of the first image; image i uses seed + i."),
                 steps: int = typer.Option(25, "--steps", min=1, help="Denoising steps."),
                 guidance: float = typer.Option(7.5, "--guidance", help="Classifier-free guidance scale."),
                 as_json: bool = typer.Option(False, "--json", help="Print the written files as JSON.")) -> None:
    """Generate PNGs for a prompt (the mini SD by default, or any diffusers checkpoint)."""
    from conceptguard.generation import check_prompt, generate
    from conceptguard.models import load_pipeline

    if not prompt.strip():
        raise InvalidInputError("empty prompt")
    pipe = load_pipeline(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_prompt(prompt, pipe.tokenizer)
    for w in caught:
        console.print(f"warning: {w.message}")
    out = _out_dir(out)
    files = []
    with _progress() as bar:
        task = bar.add_task("generating", total=n, info="")
        for start in range(0, n, 16):
            k = min(16, n - start)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                images = generate(pipe, [prompt] * k, [seed + start + i for i in range(k)], steps=steps,
                                  guidance=guidance)
            for i, im in enumerate(images):
                path = out / f"{seed + start + i:06d}.png"
                im.save(path)
                files.append(str(path))
            bar.advance(task, k)
    if as_json:
        _emit_json({"prompt": prompt, "model": model or "miniworld", "files": files})
    else:
        console.print(f"wrote {n} images to {out}")


# ------------------------------------------------------------------------------ evaluation

@app.command("bench")
def bench_cmd(config: Optional[Path] = typer.Option(None, "--config", help="YAML run config (default: every baseline x every mini-world concept x {unacceptable, paraphrase, acceptable})."),
              out: Path = typer.Option(Path("runs/bench"), "--out", help="Folder for results.sqlite, images and the report files."),
              results_doc: Optional[Path] = typer.Option(None, "--results-doc", help="Also write this Markdown document with its plots (e.g. docs/BENCH.md); overrides the config's results_doc."),
              as_json: bool = typer.Option(False, "--json", help="Print results.json to stdout.")) -> None:
    """Run a benchmark: generate, judge, store (resumable) and report."""
    from conceptguard.eval.report import print_table, write_report
    from conceptguard.eval.runner import Runner, load_config

    cfg = load_config(config)
    if results_doc is not None:
        cfg.results_doc = str(results_doc)
    out = _out_dir(out)
    t0 = time.time()
    with _progress() as bar:
        runner = Runner(cfg, out, _reporter(bar))
        runner.run()
    results = runner.results()
    results["seconds"], results["invocations"] = _wall_time(out, time.time() - t0)
    files = write_report(results, out)
    if cfg.results_doc:
        from conceptguard.eval.comparison import write as write_comparison

        command = ("conceptguard bench" + (f" --config {config}" if config else "") + f" --out {out}"
                   + (f" --results-doc {results_doc}" if results_doc else ""))
        files["results_doc"] = write_comparison(results, cfg.results_doc, command)
    if as_json:
        _emit_json(results)
        return
    print_table(results, Console())
    console.print(f"{len(results['rows'])} result rows in {results['seconds']} s; report: {files['html']}"
                  + (f"; {files['results_doc']}" if "results_doc" in files else ""))


def _wall_time(out: Path, seconds: float) -> tuple[float, int]:
    """Wall time of a run summed over its invocations (a resumed run adds to it)."""
    path = out / "wall_time.json"
    spent = json.loads(path.read_text()) if path.is_file() else {"seconds": 0.0, "invocations": 0}
    spent = {"seconds": round(spent["seconds"] + seconds, 1), "invocations": spent["invocations"] + 1}
    path.write_text(json.dumps(spent))
    return spent["seconds"], spent["invocations"]


@app.command("judge")
def judge_cmd(images: list[Path] = typer.Argument(..., help="Image files."),
              judge: str = typer.Option("oracle", "--judge", help="oracle, clip, or nudenet[:unlearndiffatk|erasurebench]."),
              concept: str = typer.Option("burning", "--concept", help="Concept to score (clip: c_u vs c_a; nudenet: nudity)."),
              as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Judge images: is the concept there, and how sure is the judge."""
    from conceptguard.eval.judges import ClipZeroShotJudge, NudeNetJudge, OracleJudge

    pictures = _read_images(images)
    name, _, preset = judge.partition(":")
    if name == "oracle":
        j = OracleJudge()
    elif name == "clip":
        j = ClipZeroShotJudge()
    elif name == "nudenet":
        j = NudeNetJudge(preset or "unlearndiffatk")
    else:
        raise InvalidInputError(f"unknown judge {judge!r}; one of oracle, clip, nudenet")
    verdicts = j.judge(pictures, concept)
    rows = [{"image": str(p), "judge": j.describe(), "concept": concept, **v} for p, v in zip(images, verdicts)]
    if as_json:
        _emit_json(rows)
        return
    table = Table(title=j.describe())
    for col in ("image", "concept", "p", "present"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["image"], concept, f"{r['p']:.3f}", "[red]yes" if r["present"] else "no")
    Console().print(table)


train_app = typer.Typer(help="Train a defense for a concept and save it with save_pretrained.", no_args_is_help=True)
app.add_typer(train_app, name="train")


def _train_edit(method: str, concept: str, out: Path, model: Optional[str], seed: int, variant: str = "x") -> None:
    from conceptguard.concepts import get_concept
    from conceptguard.models import load_pipeline

    c = get_concept(concept)
    out = _out_dir(out)
    pipe = load_pipeline(model)
    t0 = time.time()
    if method == "esd":
        from conceptguard.defenses.baselines.esd import MINI, train_esd

        if variant not in ("x", "u"):
            raise InvalidInputError(f"--variant must be x or u, not {variant!r}")
        with _progress() as bar:
            task = bar.add_task(f"ESD-{variant} {c.name}", total=MINI["iterations"], info="")
            edit = train_esd(pipe, c, variant, seed=seed,
                             progress=lambda i, n, loss: bar.update(task, completed=i, total=n, info=f"loss {loss:.5f}"))
    else:
        from conceptguard.defenses.baselines.uce import train_uce

        edit = train_uce(pipe, c)
    edit.config["base_model"] = model or "miniworld"
    edit.save_pretrained(out)
    console.print(f"{edit.name} for {c.name}: trained in {time.time() - t0:.1f} s, saved to {out}")


@train_app.command("esd")
def train_esd_cmd(concept: str = typer.Option(..., "--concept", help="Concept to erase."),
                  out: Path = typer.Option(..., "--out", help="Folder to save the edit in."),
                  variant: str = typer.Option("x", "--variant", help="x: cross-attention (ESD-x); u: the rest (ESD-u)."),
                  model: Optional[str] = typer.Option(None, "--model", help="Base pipeline (default: the mini SD)."),
                  seed: int = typer.Option(0, "--seed")) -> None:
    """Erased Stable Diffusion: fine-tune the UNet toward negative guidance for the concept."""
    _train_edit("esd", concept, out, model, seed, variant)


@train_app.command("uce")
def train_uce_cmd(concept: str = typer.Option(..., "--concept", help="Concept to erase."),
                  out: Path = typer.Option(..., "--out", help="Folder to save the edit in."),
                  model: Optional[str] = typer.Option(None, "--model", help="Base pipeline (default: the mini SD)."),
                  seed: int = typer.Option(0, "--seed")) -> None:
    """Unified Concept Editing: closed-form edit of the cross-attention keys and values."""
    _train_edit("uce", concept, out, model, seed)


# ------------------------------------------------------------------------------------- main

def _quiet_libraries() -> None:
    """The ML libraries log optional-extra notices; a CLI user only needs our messages."""
    for name in ("transformers", "diffusers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # transformers missing is reported when a command needs it
        pass
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def main() -> None:
    _quiet_libraries()
    try:
        app(standalone_mode=False)
    except ConceptGuardError as exc:
        message = " ".join(str(exc).split())
        print(f"conceptguard: error: {message}", file=sys.stderr)
        sys.exit(2)
    except (click.exceptions.Exit, typer.Exit) as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, typer.Abort):
        print("conceptguard: aborted", file=sys.stderr)
        sys.exit(130)
    except (click.ClickException, typer.exceptions.TyperException) as exc:  # typer >= 0.2x raises its own click's
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare command group: its help is the answer
            exc.show()
            sys.exit(2)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"conceptguard: error: {' '.join(message.split())} (see --help)", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2) or 2)
    except KeyboardInterrupt:
        print("conceptguard: interrupted (training resumes from its last checkpoint)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()


# The CRTs' commands live in their own modules and register themselves on `app` / `train_app`.
from conceptguard import cli_espresso  # noqa: E402,F401
from conceptguard import cli_sanitizer  # noqa: E402,F401
from conceptguard import cli_allbutone  # noqa: E402,F401
from conceptguard import cli_attacks  # noqa: E402,F401
