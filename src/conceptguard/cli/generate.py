"""`conceptguard generate`: images for a prompt, no defense."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import typer

from conceptguard.cli.common import app, console, emit_json, out_dir, plural, progress_bar, reporter
from conceptguard.errors import InvalidInputError
from conceptguard.miniworld.paths import MINIWORLD


@app.command("generate")
def generate_cmd(prompt: str = typer.Argument(..., help="The text prompt."),
                 out: Path = typer.Option(..., "--out", help="Folder for the PNG files."),
                 model: Optional[str] = typer.Option(None, "--model",
                     help="Hub id or local folder of a diffusers text-to-image pipeline (default: the mini SD)."),
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
    out = out_dir(out)
    files = []
    with progress_bar() as bar:
        progress = reporter(bar)  # a bar on a terminal, log lines under nohup or CI
        progress("generating", 0, n)
        for start in range(0, n, 16):
            k = min(16, n - start)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                images = generate(pipe, [prompt] * k, [seed + start + i for i in range(k)],
                                  num_inference_steps=steps, guidance_scale=guidance)
            for i, im in enumerate(images):
                path = out / f"{seed + start + i:06d}.png"
                im.save(path)
                files.append(str(path))
            progress("generating", start + k, n)
    if as_json:
        emit_json({"prompt": prompt, "model": model or MINIWORLD, "files": files})
    else:
        console.print(f"wrote {plural(n, 'image')} to {out}")
