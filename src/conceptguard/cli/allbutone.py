"""`conceptguard purify`: All but One's concept purification of existing images (its training is
`conceptguard train allbutone`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from conceptguard.cli.common import app, console, emit_json, out_dir, plural, progress_bar, read_images
from conceptguard.errors import InvalidInputError


@app.command("purify")
def purify_cmd(images: list[Path] = typer.Argument(..., metavar="IMAGE", help="Images that show the erased concept."),
               edit: Path = typer.Option(..., "--edit", help="A folder from `conceptguard train allbutone`."),
               out: Path = typer.Option(..., "--out", help="Folder for the purified PNGs."),
               prompt: Optional[str] = typer.Option(None, "--prompt",
                   help="Prompt naming the concept for inversion (default: the edit's concept phrase)."),
               model: Optional[str] = typer.Option(None, "--model",
                                                   help="Base pipeline the edit was trained on (default: the mini SD)."),
               guidance: float = typer.Option(7.5, "--guidance", min=0.0, help="Classifier-free guidance of the regeneration."),
               strength: float = typer.Option(0.7, "--strength", min=0.01, max=1.0,
                                              help="Share of the DDIM schedule inverted and regenerated (1: from pure noise)."),
               as_json: bool = typer.Option(False, "--json", help="Print the written files as JSON.")) -> None:
    """Concept purification: DDIM-invert each image with the original model, regenerate it with
    the edited one; the concept is replaced by the alternative, the layout kept."""
    from conceptguard.defenses.allbutone import purify
    from conceptguard.defenses.baselines.weight_edit import WeightEdit
    from conceptguard.domains import get_concept
    from conceptguard.models import load_pipeline

    pictures = read_images(images)
    if not edit.is_dir():
        raise InvalidInputError(f"edit folder not found: {edit}")
    weights = WeightEdit.from_pretrained(edit)
    pipe = load_pipeline(model)
    if prompt is None and "concept" not in weights.config:
        raise InvalidInputError(f"the edit in {edit} names no concept; give --prompt")
    text = prompt or get_concept(weights.config["concept"]).c_u
    out = out_dir(out)
    files = []
    with progress_bar() as bar:
        task = bar.add_task("purifying", total=len(pictures), info="")
        for start in range(0, len(pictures), 16):
            chunk = pictures[start:start + 16]
            for k, im in enumerate(purify(pipe, weights, chunk, text, guidance_scale=guidance, strength=strength)):
                path = out / f"{Path(images[start + k]).stem}.purified.png"
                im.save(path)
                files.append(str(path))
            bar.advance(task, len(chunk))
    if as_json:
        emit_json({"edit": str(edit), "prompt": text, "files": files})
    else:
        console.print(f"wrote {plural(len(files), 'purified image')} to {out}")
