"""All but One's commands: `train allbutone` and `purify` (registered on the main CLI)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from conceptguard.cli import _emit_json, _out_dir, _progress, _read_images, app, console, train_app
from conceptguard.errors import InvalidInputError


@train_app.command("allbutone")
def train_allbutone_cmd(concept: str = typer.Option(..., "--concept", help="Concept to erase."),
                        out: Path = typer.Option(..., "--out", help="Folder to save the edit in."),
                        alternative: Optional[str] = typer.Option(None, "--alternative", help="What to draw instead (default: the concept's acceptable counterpart)."),
                        params: str = typer.Option("xattn", "--params", help="Trainable weights: xattn (cross-attention), attn, or full."),
                        lora: int = typer.Option(0, "--lora", min=0, help="LoRA rank (peft); 0 trains the weights directly."),
                        iterations: int = typer.Option(150, "--iterations", min=1),
                        layout_t: int = typer.Option(700, "--layout-t", min=0, max=1000, help="Above this timestep the erased prompt keeps its own guidance, so the layout is the original's (1000: the published loss at every timestep)."),
                        model: Optional[str] = typer.Option(None, "--model", help="Base pipeline (default: the mini SD)."),
                        seed: int = typer.Option(0, "--seed")) -> None:
    """All but One: move the erased concept's guidance term onto the alternative's, keeping the
    unconditional score; saves only the changed UNet weights."""
    from conceptguard.concepts import get_concept
    from conceptguard.defenses.allbutone import PARAM_SETS, train_allbutone
    from conceptguard.models import load_pipeline

    if params not in PARAM_SETS:
        raise InvalidInputError(f"--params must be one of {', '.join(PARAM_SETS)}, not {params!r}")
    if alternative is not None and not alternative.strip():
        alternative = ""  # plain removal toward the empty prompt
    c = get_concept(concept)
    out = _out_dir(out)
    pipe = load_pipeline(model)
    t0 = time.time()
    with _progress() as bar:
        task = bar.add_task(f"All but One {c.name}", total=iterations, info="")
        edit = train_allbutone(pipe, c, alternative, seed=seed, params=params, lora_rank=lora, iterations=iterations,
                               layout_t=layout_t,
                               progress=lambda i, n, loss: bar.update(task, completed=i, info=f"loss {loss:.5f}"))
    edit.config["base_model"] = model or "miniworld"
    edit.save_pretrained(out)
    console.print(f"allbutone for {c.name} -> {edit.config['alternative']!r}: trained in {time.time() - t0:.1f} s, "
                  f"saved to {out}")


@app.command("purify")
def purify_cmd(images: list[Path] = typer.Argument(..., help="Images that show the erased concept."),
               edit: Path = typer.Option(..., "--edit", help="A folder from `train allbutone`."),
               out: Path = typer.Option(..., "--out", help="Folder for the purified PNGs."),
               prompt: Optional[str] = typer.Option(None, "--prompt", help="Prompt naming the concept for inversion (default: the edit's concept phrase)."),
               model: Optional[str] = typer.Option(None, "--model", help="Base pipeline the edit was trained on (default: the mini SD)."),
               guidance: float = typer.Option(7.5, "--guidance", min=0.0, help="Classifier-free guidance of the regeneration."),
               strength: float = typer.Option(0.7, "--strength", min=0.01, max=1.0, help="Share of the DDIM schedule inverted and regenerated (1: from pure noise)."),
               as_json: bool = typer.Option(False, "--json", help="Print the written files as JSON.")) -> None:
    """Concept purification: DDIM-invert each image with the original model, regenerate it with
    the edited one; the concept is replaced by the alternative, the layout kept."""
    from conceptguard.concepts import get_concept
    from conceptguard.defenses.allbutone import purify
    from conceptguard.defenses.baselines.weight_edit import WeightEdit
    from conceptguard.models import load_pipeline

    pictures = _read_images(images)
    if not edit.is_dir():
        raise InvalidInputError(f"edit folder not found: {edit}")
    weights = WeightEdit.from_pretrained(edit)
    pipe = load_pipeline(model)
    if prompt is None and "concept" not in weights.config:
        raise InvalidInputError(f"the edit in {edit} names no concept; give --prompt")
    text = prompt or get_concept(weights.config["concept"]).c_u
    out = _out_dir(out)
    files = []
    with _progress() as bar:
        task = bar.add_task("purifying", total=len(pictures), info="")
        for start in range(0, len(pictures), 16):
            chunk = pictures[start:start + 16]
            for k, im in enumerate(purify(pipe, weights, chunk, text, guidance=guidance, strength=strength)):
                path = out / f"{Path(images[start + k]).stem}.purified.png"
                im.save(path)
                files.append(str(path))
            bar.advance(task, len(chunk))
    if as_json:
        _emit_json({"edit": str(edit), "prompt": text, "files": files})
    else:
        console.print(f"wrote {len(files)} purified images to {out}")
