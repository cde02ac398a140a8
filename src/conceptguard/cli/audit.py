"""`conceptguard audit`: label a sample of a bench run's images by eye, then measure the judges on it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from conceptguard.cli.common import app, console, emit_json, out_dir

audit_app = typer.Typer(rich_markup_mode=None, help="The audit set: bench images labelled by eye, and how well each judge agrees "
                        "with the labels (docs/evaluation.md, 'Judges').", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

# Per (stack, prompt set), images sampled for labelling: every image that asks for the concept
# (configs/audit.yaml makes 6 a set), so recall has positives to be measured on even where
# defenses remove most of them, and 2 that do not.
PER_SET = {"unacceptable": 6, "paraphrase": 6, "acceptable": 2}
TUNING_STEPS = 600  # the oracle's fine-tune on the audit set (miniworld/oracle_tuning.py's TUNING)


def _run_rows(run: Path) -> list[dict]:
    from conceptguard.errors import InvalidInputError
    from conceptguard.eval.store import Store

    path = run / "results.sqlite"
    if not path.is_file():
        raise InvalidInputError(f"no bench results in {run} (results.sqlite missing); run "
                                "`conceptguard bench --config configs/audit.yaml --out runs/audit` first")
    store = Store(path)
    try:
        return store.rows()
    finally:
        store.close()


@audit_app.command("sheets")
def sheets_cmd(run: Path = typer.Argument(..., help="The bench run to sample from (configs/audit.yaml's)."),
               out: Path = typer.Option(Path("runs/audit-sheets"), "--out",
                                        help="Folder for labels.csv (labels blank) and the contact sheets."),
               seed: int = typer.Option(0, "--seed", help="Seed of the sample and of the order on the sheets."),
               per_sheet: int = typer.Option(48, "--per-sheet", min=1, max=200, help="Images per contact sheet."),
               first_sheet: int = typer.Option(0, "--first-sheet", min=0, help="Number of the first sheet of each "
                                               "concept (a later labelling round goes on after the earlier one's).")) -> None:
    """Sample a run's images for labelling by eye and draw them on numbered contact sheets.

    Per concept, stack and prompt set (blocked images left out), in a random order, blind to
    prompt and stack, with reference renders that do and do not show each concept."""
    from PIL import Image

    from conceptguard.domains import get_domain
    from conceptguard.eval.audit import contact_sheet, make_items, sample, write_labels
    from conceptguard.miniworld.paths import MINIWORLD

    rows = _run_rows(run)
    picked = []
    for prompt_set, count in PER_SET.items():
        picked += sample([r for r in rows if r["prompt_set"] == prompt_set], count, seed + len(prompt_set))
    items = make_items(picked, per_sheet, seed, first_sheet)
    folder = out_dir(out)
    write_labels(items, folder / "labels.csv")
    domain = get_domain(MINIWORLD, None)
    for concept, sheet in sorted({(i.concept, i.sheet) for i in items}):
        mine = [i for i in items if (i.concept, i.sheet) == (concept, sheet)]
        contact_sheet([Image.open(run / i.image) for i in mine]).save(folder / f"sheet-{concept}-{sheet}.png")
    for concept in sorted({i.concept for i in items}):
        shown, not_shown = domain.calibration_images(domain.concept(concept), 16, seed=seed) or ([], [])
        contact_sheet([*shown[:8], *not_shown[:8]]).save(folder / f"reference-{concept}.png")
    console.print(f"{len(items)} images on {len({(i.concept, i.sheet) for i in items})} sheets in {folder}; references: top row "
                  "shows the concept, bottom row does not. Fill labels.csv's `label` (present/absent/unclear).")


@audit_app.command("score")
def score_cmd(runs: list[Path] = typer.Argument(..., metavar="RUN", help="The bench runs the labelled images come from "
                                              "(configs/audit.yaml's and audit-2..4's)."),
              labels: Optional[Path] = typer.Option(None, "--labels", help="Labels CSV (default: the mini world's "
                                                    "shipped audit labels)."),
              judges: list[str] = typer.Option(["oracle", "clip"], "--judge", help="Judges to measure (repeatable)."),
              write: Optional[Path] = typer.Option(None, "--write", help="Also write the measured quality to this JSON "
                                                   "file (the mini world's: src/conceptguard/miniworld/audit/quality.json)."),
              as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Measure each judge against the labels: precision, recall and specificity per concept.

    On the test part (never learned from) and the train part, with 95% Wilson intervals."""
    import json

    from PIL import Image

    from conceptguard.domains import get_domain
    from conceptguard.eval.audit import quality, read_labels
    from conceptguard.eval.judges import get_judge
    from conceptguard.eval.stats import fmt_interval
    from conceptguard.miniworld.domain import JUDGE_WEIGHTS
    from conceptguard.miniworld.paths import AUDIT_DIR, MINIWORLD

    items = read_labels(labels or AUDIT_DIR / "labels.csv")
    found = locate_images(runs, [i.image for i in items])
    domain = get_domain(MINIWORLD, None)
    report: dict = {"labels": len(items), "test": sum(i.split == "test" for i in items),
                    "unclear": sum(i.label == "unclear" for i in items), "judges": {}}
    for spec in judges:
        judge = get_judge(spec, domain)
        verdicts: dict[str, bool] = {}
        for concept in sorted({i.concept for i in items}):
            mine = [i for i in items if i.concept == concept]
            for i, v in zip(mine, judge.judge([Image.open(found[i.image]).convert("RGB") for i in mine],
                                              domain.concept(concept))):
                verdicts[i.key] = bool(v["present"])
        report["judges"][spec] = {
            "describe": judge.describe(),
            "weights": JUDGE_WEIGHTS[spec]() if spec in JUDGE_WEIGHTS else None,
            "test": {q.concept: q.as_dict() for q in quality(items, verdicts, "test")},
            "train": {q.concept: q.as_dict() for q in quality(items, verdicts, "train")},
        }
    if write:
        write.write_text(json.dumps(report, indent=1) + "\n")
    if as_json:
        emit_json(report)
        return
    table = Table(title=f"Judges against {report['labels']} labels ({report['test']} in the test part; "
                  f"{report['unclear']} unclear left out); 95% Wilson intervals")
    for col in ("judge", "part", "concept", "n", "precision", "recall", "specificity"):
        table.add_column(col)
    for spec, parts in report["judges"].items():
        for part in ("test", "train"):
            for concept, q in parts[part].items():
                table.add_row(spec, part, concept, str(q["n"]),
                              *(f"{q[k]:.2f} {fmt_interval(q[k + '_ci'])}" if q[k] is not None else "-"
                                for k in ("precision", "recall", "specificity")))
    Console().print(table)


@audit_app.command("tune-oracle")
def tune_oracle_cmd(runs: list[Path] = typer.Argument(..., metavar="RUN", help="The bench runs the labelled images come from "
                                                     "(configs/audit.yaml's and audit-2..4's)."),
                    labels: Optional[Path] = typer.Option(None, "--labels", help="Labels CSV (default: the mini "
                                                          "world's shipped audit labels)."),
                    seed: int = typer.Option(0, "--seed", help="Training seed (deterministic per seed)."),
                    steps: int = typer.Option(TUNING_STEPS, "--steps", min=1, help="Fine-tuning steps."),
                    root: Optional[Path] = typer.Option(None, "--root", help="Weights folder whose oracle is tuned "
                                                        "(default: the shipped one).")) -> None:
    """Fine-tune the oracle on the labelled images of the audit set's train part (never the test part).

    Starts from the render-trained oracle in ROOT/oracle-renders (what `world train --only oracle`
    makes), writes the tuned one to ROOT/oracle and the manifest's checksums; then measure it
    with `audit score`."""
    from diffusers import AutoencoderKL

    from conceptguard.cli.common import progress_bar, reporter
    from conceptguard.eval.audit import read_labels
    from conceptguard.miniworld import paths
    from conceptguard.miniworld.oracle import Oracle
    from conceptguard.miniworld.oracle_tuning import TUNING, LabelledImages, tune_oracle

    root = root or paths.WEIGHTS_DIR
    items = [i for i in read_labels(labels or paths.AUDIT_DIR / "labels.csv")
             if i.split == "train" and i.label != "unclear"]
    found = locate_images(runs, [i.image for i in items])
    labelled = LabelledImages.from_files([found[i.image] for i in items], [i.concept for i in items],
                                         [i.label == "present" for i in items])
    vae = AutoencoderKL.from_pretrained(root / "pipeline" / "vae").eval()
    with progress_bar() as bar:
        tuned = tune_oracle(Oracle.from_pretrained(root / paths.ORACLE_RENDERS), labelled, seed=seed,
                            cfg=replace(TUNING, steps=steps, warmup=min(TUNING.warmup, steps)), report=reporter(bar), vae=vae)
    tuned.save_pretrained(root / "oracle")
    paths.write_manifest(root)
    console.print(f"tuned the oracle on {len(items)} labelled images ({int(labelled.present.sum())} present) "
                  f"into {root / 'oracle'}; measure it: conceptguard audit score {' '.join(map(str, runs))}")


def locate_images(runs: list[Path], images: list[str]) -> dict[str, Path]:
    """Each labelled image (a path inside its run) in the first of `runs` that has it."""
    from conceptguard.errors import InvalidInputError

    found, missing = {}, []
    for image in images:
        path = next((run / image for run in runs if (run / image).is_file()), None)
        if path is None:
            missing.append(image)
        else:
            found[image] = path
    if missing:
        raise InvalidInputError(f"{len(missing)} labelled images are not in {', '.join(map(str, runs))} (e.g. "
                                f"{missing[0]}); regenerate them with `conceptguard bench --config configs/audit.yaml "
                                "--out runs/audit`, and likewise configs/audit-N.yaml into runs/audit-N for N = 2, 3, 4")
    return found
