"""`conceptguard bench` (generate, judge, store, report) and `conceptguard judge`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from conceptguard.cli.common import app, console, emit_json, out_dir, plural, progress_bar, read_images, reporter


@app.command("bench")
def bench_cmd(config: Optional[Path] = typer.Option(None, "--config", help="YAML run config (default: every stack x the "
                                                   "domain's concepts x its prompt sets; see docs/evaluation.md)."),
              out: Path = typer.Option(Path("runs/bench"), "--out",
                                       help="Folder for results.sqlite, images and the report files."),
              results_doc: Optional[Path] = typer.Option(None, "--results-doc",
                                                         help="Also write this Markdown document with its plots "
                                                         "(e.g. docs/BENCH.md); overrides the config's results_doc."),
              rejudge: bool = typer.Option(False, "--rejudge", help="First judge every stored image again with the "
                                           "current judges (needed after a judge's weights changed)."),
              dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan -- cells, images, judges, "
                                           "what downloads or trains, missing prompt files, a time estimate from "
                                           "measured costs -- and run nothing."),
              as_json: bool = typer.Option(False, "--json", help="Print results.json (with --dry-run: the plan) to stdout.")
              ) -> None:
    """Run a benchmark: generate, judge, store (resumable) and report."""
    from conceptguard.eval.report import print_table, write_report
    from conceptguard.eval.runner import Runner, load_config

    if dry_run:
        _print_plan(load_config(config, plan=True), out, as_json)
        return
    cfg = load_config(config)
    if results_doc is not None:
        cfg.results_doc = str(results_doc)
    out = out_dir(out)
    t0 = time.time()
    with progress_bar() as bar:
        runner = Runner(cfg, out, reporter(bar))
        if rejudge:
            runner.rejudge()
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
        emit_json(results)
        return
    print_table(results, Console())
    images = sum(r["n_images"] for r in results["rows"])
    console.print(f"{plural(images, 'image')} in {plural(len(results['rows']), 'result row')}, {results['seconds']} s; "
                  f"report: {files['html']}"
                  + (f"; {files['results_doc']}" if "results_doc" in files else ""))


def _print_plan(cfg, out: Path, as_json: bool) -> None:
    from conceptguard.eval.plan import plan

    found = plan(cfg, out if out.is_dir() else None)
    if as_json:
        emit_json(found)
        return
    table = Table(title="bench plan (nothing run)", show_header=False)
    clip = found["clip"]
    missing = found["missing_prompt_files"]
    images = f"{found['images']:,}" + ("" if found["images_complete"] else " (+ those of the missing prompt files)")
    minutes = found["estimated_minutes"]
    for key, value in [
        ("model", f"{found['model']['id']} -- {found['model']['status']}"),
        ("clip", f"{clip['id']} -- {clip['status']}" if clip else "the mini CLIP"),
        ("device / dtype", f"{found['device'] or 'default'} / {found['dtype']}"),
        ("stacks", ", ".join(found["stacks"])), ("concepts", ", ".join(found["concepts"])),
        ("prompt sets", ", ".join(found["prompt_sets"])), ("cells", str(found["cells"])), ("images", images),
        ("judges", ", ".join(found["judges"] or [])),
        ("attacks", f"{', '.join(found['attacks'])} at the {found['attack_budget']} budget" if found["attacks"] else "none"),
        ("trained on first use", ", ".join(found["trained_on_first_use"]) or "nothing"),
        ("missing prompt files", ", ".join(missing) if missing else "none"),
        ("FID vs real images", _fid_line(found["fid"])),
        ("time per image", "unknown" if found["seconds_per_image"] is None else f"{found['seconds_per_image']:.3f} s"),
        ("estimate", ("unknown" if minutes is None else f"{minutes} min of generation and judging "
                      "(training and attack searches on top)") + f"; {found['estimate_source']}"),
    ]:
        table.add_row(key, value)
    Console().print(table)


def _fid_line(fid: dict | None) -> str:
    if fid is None:
        return "not measured (no fid_reference)"
    count = "missing" if fid["reference_images"] is None else f"{fid['reference_images']} images"
    features = "the run's CLIP image embeddings" if fid["features"] == "clip" else (
        f"clean-fid's Inception {fid['inception']}" + ("" if fid["inception_found"] else " (missing)"))
    return f"{fid['reference']} ({count}), on {features}"


def _wall_time(out: Path, seconds: float) -> tuple[float, int]:
    """Wall time of a run summed over its invocations (a resumed run adds to it)."""
    path = out / "wall_time.json"
    spent = json.loads(path.read_text()) if path.is_file() else {"seconds": 0.0, "invocations": 0}
    spent = {"seconds": round(spent["seconds"] + seconds, 1), "invocations": spent["invocations"] + 1}
    path.write_text(json.dumps(spent))
    return float(spent["seconds"]), int(spent["invocations"])


@app.command("judge")
def judge_cmd(images: list[Path] = typer.Argument(..., metavar="IMAGE", help="Image files."),
              judge: str = typer.Option("oracle", "--judge", help="oracle, clip, or nudenet[:PRESET] "
                                        "(unlearndiffatk, unlearndiffatk-0.6, explicit, erasurebench)."),
              concept: Optional[str] = typer.Option(None, "--concept", help="Concept to score (oracle and clip: required, "
                                                    "the clip judge compares c_u with c_a; nudenet: nudity, the default)."),
              clip: Optional[str] = typer.Option(
                  None, "--clip", help="CLIP for the clip judge (default: the mini CLIP, which knows only the mini "
                                       "world's concepts; for real ones name e.g. openai/clip-vit-large-patch14)."),
              as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Judge images: is the concept there, and how sure is the judge."""
    from conceptguard.domains import get_concept, get_domain
    from conceptguard.errors import InvalidInputError
    from conceptguard.eval.judges import get_judge

    if concept is None:
        if not judge.startswith("nudenet"):
            raise InvalidInputError(f"name the concept to score with --concept (the {judge} judge scores one "
                                    "concept at a time)")
        concept = "nudity"
    # the oracle and the mini CLIP know only the mini world's concepts; a named CLIP, any concept
    mini_only = judge == "oracle" or (judge == "clip" and clip is None)
    target = get_concept(concept, get_domain(None, None) if mini_only else None)
    pictures = read_images(images)
    domain = get_domain(None, clip)
    j = get_judge(judge, domain)
    verdicts = j.judge(pictures, target)
    rows = [{"image": str(p), "judge": j.describe(), "concept": concept, **v} for p, v in zip(images, verdicts)]
    if as_json:
        emit_json(rows)
        return
    table = Table(title=j.describe())
    for col in ("image", "concept", "p", "present"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["image"], concept, f"{r['p']:.3f}", "[red]yes" if r["present"] else "no")
    Console().print(table)


@app.command("compare")
def compare_cmd(run: Path = typer.Argument(..., help="A bench run's folder (its results.sqlite)."),
                stack_a: str = typer.Argument(..., help="First stack, as written in the run (e.g. esd-x)."),
                stack_b: str = typer.Argument(..., help="Second stack (e.g. none)."),
                judge: Optional[str] = typer.Option(None, "--judge", help="Judge to read (default: the run's main one)."),
                as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Is stack A better than stack B here? McNemar's exact test on the same prompts and seeds,
    per concept and prompt set and pooled over concepts (lower concept rate is better)."""
    from conceptguard.eval.paired import compare_stacks
    from conceptguard.eval.stats import fmt_interval

    rows = compare_stacks(run, stack_a, stack_b, judge)
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"{stack_a} vs {stack_b}: concept rate, paired ({rows[0]['judge']} judge, 95% intervals)")
    for col in ("concept", "prompt set", "pairs", stack_a, stack_b, f"only {stack_a}", f"only {stack_b}", "p", "answer"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["concept"], r["prompt_set"], str(r["n_pairs"]), f"{r['rate_a']:.3f} {fmt_interval(r['rate_a_ci'])}",
                      f"{r['rate_b']:.3f} {fmt_interval(r['rate_b_ci'])}", str(r["only_a"]), str(r["only_b"]),
                      f"{r['p_value']:.4f}", r["answer"])
    Console().print(table)
