"""Espresso's commands: `filter` and `certify` (its training is `conceptguard train espresso-ft`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from conceptguard.cli.common import app, concept_names, console, emit_json, read_images
from conceptguard.errors import InvalidInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _expand(paths: list[Path]) -> list[Path]:
    """Image files, with each folder replaced by the images in it (sorted by name)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InvalidInputError(f"no images in folder {p}")
            out += found
        else:
            out.append(p)
    return out


def _embedder(clip: Optional[str]):
    from conceptguard.models import ClipEmbedder, load_clip

    return ClipEmbedder(*load_clip(clip))


def _load_filter(filter_dir: Optional[Path], concepts: Optional[str], clip: Optional[str], tau: Optional[float]):
    from conceptguard.defenses.espresso import EspressoFilter
    from conceptguard.domains import get_concept, get_domain

    if filter_dir is not None:
        if not filter_dir.is_dir():
            raise InvalidInputError(f"filter folder not found: {filter_dir}")
        return EspressoFilter.from_pretrained(filter_dir, embedder=_embedder(clip) if clip else None, tau=tau)
    if not concepts:
        raise InvalidInputError("give --concept NAME[,NAME...] or --filter DIR")
    # the mini CLIP knows only the mini world's concepts (as `bench` says); a named CLIP, any concept
    domain = get_domain(None, None) if clip is None else None
    return EspressoFilter(_embedder(clip), [get_concept(n, domain) for n in concept_names(concepts)],
                          tau=0.5 if tau is None else tau)


@app.command("filter")
def filter_cmd(images: list[Path] = typer.Argument(..., metavar="IMAGE", help="Image files."),
               concept: Optional[str] = typer.Option(None, "--concept",
                                                     help="Concept(s), comma-separated (un-fine-tuned filter)."),
               filter_dir: Optional[Path] = typer.Option(None, "--filter", help="A fine-tuned filter from `train espresso-ft`."),
               clip: Optional[str] = typer.Option(None, "--clip", help="CLIP id or folder (default: the mini CLIP)."),
               tau: Optional[float] = typer.Option(None, "--tau", help="Flag when p_u > tau (default 0.5, or the filter's)."),
               as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Espresso's decision for each image: p_u per concept and whether it is blocked."""
    pictures = read_images(images)
    filt = _load_filter(filter_dir, concept, clip, tau)
    decisions = filt.check(pictures, [""] * len(pictures))
    rows = [{"image": str(p), "blocked": d.blocked, "reason": d.reason,
             "p_u": {k[len("p_u_"):]: v for k, v in d.scores.items()}} for p, d in zip(images, decisions)]
    if as_json:
        emit_json({"tau": filt.tau, "rows": rows})
        return
    table = Table(title=f"Espresso (flag when p_u > {filt.tau})")
    table.add_column("image")
    for c in filt.concepts:
        table.add_column(f"p_u {c.name}")
    table.add_column("blocked")
    for r in rows:
        table.add_row(r["image"], *[f"{r['p_u'][c.name]:.3f}" for c in filt.concepts],
                      "[red]yes" if r["blocked"] else "no")
    Console().print(table)


def _labels(label: str, pictures, concept: str) -> list[bool]:
    if label in ("unacceptable", "acceptable"):
        return [label == "unacceptable"] * len(pictures)
    if label != "oracle":
        raise InvalidInputError(f"--label must be unacceptable, acceptable or oracle, not {label!r}")
    from conceptguard.miniworld.world import world_concept
    from conceptguard.models import load_oracle

    name = world_concept(concept).name  # the oracle knows only mini-world concepts
    return [j["concepts"][name] > 0.5 for j in load_oracle().judge(pictures)]


@app.command("certify")
def certify_cmd(filter_dir: Path = typer.Option(..., "--filter", help="A filter folder from `train espresso-ft`."),
                images: list[Path] = typer.Option(..., "--images",
                                                  help="Images or folders of images to certify (repeat the option)."),
                label: str = typer.Option("oracle", "--label",
                                          help="Ground truth: unacceptable, acceptable, or oracle (mini world)."),
                concept: Optional[str] = typer.Option(None, "--concept",
                                                      help="Which of the filter's concepts (default: its first)."),
                adversarial: list[Path] = typer.Option([], "--adversarial",
                                                       help="Adversarial images, paired in order with --clean."),
                clean: list[Path] = typer.Option([], "--clean", help="The clean images the adversarial ones came from."),
                eps: str = typer.Option("0.005,0.01,0.02,0.05", "--eps", help="Radii for certified accuracy."),
                plot: Optional[Path] = typer.Option(None, "--plot",
                                                    help="Write a PNG: radius histogram and certified accuracy vs radius."),
                as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Certified robustness: each image's L2 distance to the filter's decision hyperplane, certified
    accuracy at radius eps, and the embedding shifts that given adversarial images caused."""
    from conceptguard.defenses.espresso import EspressoFilter, certified_accuracy

    try:
        radii_eps = [float(e) for e in eps.split(",")]
    except ValueError:
        raise InvalidInputError(f"--eps must be comma-separated numbers, not {eps!r}") from None
    images, adversarial, clean = _expand(images), _expand(adversarial), _expand(clean)
    if len(adversarial) != len(clean):
        raise InvalidInputError(f"{len(adversarial)} adversarial images but {len(clean)} clean ones; pair them")
    pictures = read_images(images)
    adv, cln = read_images(adversarial), read_images(clean)
    if not filter_dir.is_dir():
        raise InvalidInputError(f"filter folder not found: {filter_dir}")
    filt = EspressoFilter.from_pretrained(filter_dir)
    c = filt._concept(concept)
    cert = filt.certify(pictures, _labels(label, pictures, c.name), c.name)
    result: dict = {"concept": c.name, "tau": filt.tau, "n": len(pictures),
              "accuracy": float(cert["correct"].mean()),
              "mean_radius_correct": float(cert["radius"][cert["correct"]].mean()) if cert["correct"].any() else None,
              "certified_accuracy": {str(e): certified_accuracy(cert["radius"], cert["correct"], e) for e in radii_eps},
              "radii": [round(float(r), 6) for r in cert["radius"]]}
    if adv:
        shifts = (filt.embed(adv) - filt.embed(cln)).norm(dim=-1).cpu().numpy()
        result["adversarial_shift"] = {"min": float(shifts.min()), "mean": float(shifts.mean()),
                                       "max": float(shifts.max())}
    if plot:
        _plot_certificate(cert["radius"], cert["correct"], result.get("adversarial_shift"), plot, c.name)
        result["plot"] = str(plot)
    if as_json:
        emit_json(result)
        return
    table = Table(title=f"Espresso certificate: {c.name} ({len(pictures)} images, accuracy {result['accuracy']:.3f})")
    table.add_column("radius eps")
    table.add_column("certified accuracy")
    for e, v in result["certified_accuracy"].items():
        table.add_row(e, f"{v:.3f}")
    Console().print(table)
    if result["mean_radius_correct"] is not None:
        console.print(f"mean radius of correctly classified images: {result['mean_radius_correct']:.4f}")
    if "adversarial_shift" in result:
        s = result["adversarial_shift"]
        console.print(f"adversarial embedding shift: min {s['min']:.4f}, mean {s['mean']:.4f}, max {s['max']:.4f}")


def _plot_certificate(radii: np.ndarray, correct: np.ndarray, shift: dict | None, path: Path, concept: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.hist(radii[correct], bins=30, color="tab:blue", label="correct")
    left.hist(radii[~correct], bins=30, color="tab:red", alpha=0.7, label="wrong")
    left.set(xlabel="certified radius (L2, image embedding)", ylabel="images", title=f"{concept}: radii")
    grid = np.linspace(0, max(float(radii.max()), 1e-3), 100)
    right.plot(grid, [np.mean(correct & (radii > e)) for e in grid])
    right.set(xlabel="radius eps", ylabel="certified accuracy", title="certified accuracy", ylim=(0, 1))
    if shift:
        for ax in (left, right):
            ax.axvline(shift["mean"], color="k", ls="--", label="mean adversarial shift")
    left.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
