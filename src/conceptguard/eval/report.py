"""Write the benchmark report (JSON, CSV, Markdown, HTML, plots) from a results dict.

The results dict is a public contract:

    {"config": {...},
     "rows": [{"stack", "concept", "prompt_set", "n_images", "concept_rate", "clip_accuracy",
               "block_rate", "normalized_clip_score", "prompt_following", "fd", "seconds"}, ...],
     "judges": {"concept_rate": "oracle (p > 0.5)", ...}}   # optional

Every metric may be None; the report shows those as "–" and leaves them out of means.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display on CI and training machines; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape as rich_escape  # noqa: E402
from rich.table import Table  # noqa: E402

from conceptguard.eval.metrics import direction_label  # noqa: E402
from conceptguard.eval.stats import Interval, fmt_interval, wilson  # noqa: E402

COLUMNS = ("stack", "concept", "prompt_set", "n_images", "concept_rate", "clip_accuracy",
           "block_rate", "normalized_clip_score", "prompt_following", "fd", "seconds",
           "concept_rate_ci", "clip_accuracy_ci", "block_rate_ci", "normalized_clip_score_ci",
           "prompt_following_ci", "fd_ci")
# On acceptable prompts the question is utility; on every other set it is whether the concept shows.
ACCEPTABLE_METRICS = ("prompt_following", "normalized_clip_score")
CONCEPT_METRICS = ("concept_rate", "concept_rate_corrected")
MISSING = "–"
NO_ROWS = "No rows: the evaluation produced no results."


# ---------------------------------------------------------------- aggregation

def _unique(values) -> list:
    """Distinct values in order of first appearance, so tables follow the run order."""
    return list(dict.fromkeys(values))


def _mean(rows: list[dict], metric: str) -> float | None:
    """Unweighted mean over rows, ignoring None; None when nothing is left."""
    values = [r[metric] for r in rows if r.get(metric) is not None]
    return sum(values) / len(values) if values else None


def _select(rows: list[dict], **where) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def _prompt_sets(rows: list[dict]) -> list[str]:
    """Unacceptable, paraphrase, then any others (e.g. adversarial), acceptable last."""
    found = _unique(r["prompt_set"] for r in rows)
    head = [s for s in ("unacceptable", "paraphrase") if s in found]
    tail = ["acceptable"] if "acceptable" in found else []
    return head + [s for s in found if s not in head + tail] + tail


def summary_table(results: dict) -> list[dict]:
    """One dict per defense with the headline means (None where no row has the metric)."""
    rows = results.get("rows") or []
    summary = []
    for defense in _unique(r["stack"] for r in rows):
        mine = _select(rows, stack=defense)
        unacceptable = _select(mine, prompt_set="unacceptable")
        acceptable = _select(mine, prompt_set="acceptable")
        summary.append({
            "stack": defense,
            "concept_rate_unacceptable": _mean(unacceptable, "concept_rate"),
            "concept_rate_paraphrase": _mean(_select(mine, prompt_set="paraphrase"), "concept_rate"),
            "block_rate_acceptable": _mean(acceptable, "block_rate"),
            "prompt_following_acceptable": _mean(acceptable, "prompt_following"),
            "normalized_clip_score_acceptable": _mean(acceptable, "normalized_clip_score"),
            "concept_rate_unacceptable_ci": pooled_interval(unacceptable),
            "concept_rate_paraphrase_ci": pooled_interval(_select(mine, prompt_set="paraphrase")),
            "block_rate_acceptable_ci": pooled_interval(acceptable, "block_rate"),
            "prompt_following_acceptable_ci": pooled_interval(acceptable, "prompt_following"),
            "normalized_clip_score_acceptable_ci": mean_interval(acceptable, "normalized_clip_score"),
        })
    return summary


def _fmt(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3f}"


# ---------------------------------------------------------------- intervals

RATES = ("concept_rate", "block_rate", "prompt_following")  # shares of images: Wilson intervals pool


def pooled_interval(rows: list[dict], metric: str = "concept_rate") -> Interval | None:
    """Wilson interval of a rate over every image of `rows` pooled (a mean over concepts with
    equal sample sizes is the pooled rate)."""
    rows = [r for r in rows if r.get(metric) is not None]
    n = sum(r["n_images"] for r in rows)
    return wilson(sum(round(r[metric] * r["n_images"]) for r in rows), n) if n else None


def mean_interval(rows: list[dict], metric: str) -> Interval | None:
    """The mean over rows of each row's interval bounds (for means, whose samples cannot be pooled
    from the rows; conservative for independent concepts)."""
    found = [c for r in rows if (c := r.get(f"{metric}_ci"))]
    return (float(np.mean([c[0] for c in found])), float(np.mean([c[1] for c in found]))) if found else None


def value_and_interval(value: float | None, interval) -> str:
    """"0.125 [0.022, 0.471]" (the value alone when it has no interval)."""
    return MISSING if value is None else f"{value:.3f} {fmt_interval(tuple(interval) if interval else None)}".rstrip()


def with_interval(rows: list[dict], metric: str) -> str:
    """The metric's mean over `rows` with its interval: a single row's own; several rows' pooled
    Wilson interval for rates, the mean of their bounds for means."""
    mine = [r for r in rows if r.get(metric) is not None]
    if not mine:
        return MISSING
    if len(mine) == 1:
        interval = mine[0].get(f"{metric}_ci")
    else:
        interval = pooled_interval(mine, metric) if metric in RATES else mean_interval(mine, metric)
    return value_and_interval(_mean(mine, metric), interval)


# ---------------------------------------------------------------- tables

@dataclass
class _Table:
    """One prompt set's table as strings, rendered to both Markdown and HTML."""

    prompt_set: str
    metrics: tuple[str, ...]
    header: list[str]
    body: list[list[str]]
    judges: str | None


def _build_tables(results: dict) -> list[_Table]:
    rows = results.get("rows") or []
    judges = results.get("judges") or {}
    defenses = _unique(r["stack"] for r in rows)
    tables = []
    for prompt_set in _prompt_sets(rows):
        in_set = _select(rows, prompt_set=prompt_set)
        metrics = tuple(m for m in (ACCEPTABLE_METRICS if prompt_set == "acceptable" else CONCEPT_METRICS)
                        if any(r.get(m) is not None for r in in_set)) or CONCEPT_METRICS[:1]
        concepts = _unique(r["concept"] for r in in_set)
        body = []
        for defense in defenses:
            mine = _select(in_set, stack=defense)
            cells = [_cell(_select(mine, concept=c), metrics) for c in concepts]
            body.append([defense, *cells, _cell(mine, metrics)])
        named = [f"{m}: {judges[m]}" for m in metrics if judges.get(m)]
        tables.append(_Table(prompt_set, metrics, ["stack", *concepts, "mean"], body,
                             "; ".join(named) if named else None))
    return tables


def _cell(rows: list[dict], metrics: tuple[str, ...]) -> str:
    # Two metrics share a cell ("pf / nclip") so each prompt set stays one table.
    return " / ".join(with_interval(rows, m) for m in metrics)


def _md_escape(text: str) -> str:
    return str(text).replace("|", r"\|")


def judge_quality_line(results: dict) -> str:
    """How far the concept-rate judge can be trusted: its precision and recall per concept on the
    audit set's test part (images labelled by eye it never learned from), or that it is unchecked."""
    judges = results.get("judges") or {}
    quality = judges.get("judge_quality")
    if not quality:
        return (f"Judge {judges.get('concept_rate', '?')} is not checked against labels for these weights "
                "(`conceptguard audit score`): its concept rates carry its unmeasured errors.")
    parts = [f"{c} precision {value_and_interval(q['precision'], q['precision_ci'])}, recall "
             f"{value_and_interval(q['recall'], q['recall_ci'])} (n={q['n']})" for c, q in quality.items()]
    return ("Judge checked against the audit set (images labelled by eye; its test part, never learned from): "
            + "; ".join(parts) + ". `concept_rate_corrected` corrects each concept rate for the judge's "
            "measured recall and specificity (Rogan-Gladen).")


def render_markdown(results: dict) -> str:
    lines = ["# ConceptGuard benchmark report", "", _md_escape(judge_quality_line(results)), ""]
    tables = _build_tables(results)
    if not tables:
        return "\n".join(lines + [NO_ROWS, ""])
    for t in tables:
        lines += [f"## {_md_escape(t.prompt_set)}: {' / '.join(t.metrics)}", ""]
        lines.append("| " + " | ".join(_md_escape(h) for h in t.header) + " |")
        lines.append("|" + "---|" + "---:|" * (len(t.header) - 1))
        lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in t.body]
        lines.append("")
        if t.judges:
            lines += [f"Judges: {_md_escape(t.judges)}", ""]
    return "\n".join(lines)


def _html_table(t: _Table) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in t.body)
    judges = f'<p class="judges">Judges: {esc(t.judges)}</p>' if t.judges else ""
    return (f"<h2>{esc(t.prompt_set)}: {esc(' / '.join(t.metrics))}</h2>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{judges}")


_CSS = ("body{font-family:sans-serif;margin:2em;max-width:80em}"
        "table{border-collapse:collapse;margin-bottom:.5em}"
        "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
        "th:first-child,td:first-child{text-align:left}"
        ".judges{color:#555;font-size:90%}img{max-width:100%}")


def render_html(results: dict, plots: dict[str, bytes]) -> str:
    """A self-contained page: tables, plots as base64 PNG, and the run config."""
    tables = _build_tables(results)
    parts = [f'<p class="judges">{html.escape(judge_quality_line(results))}</p>']
    parts += [_html_table(t) for t in tables] or [f"<p>{html.escape(NO_ROWS)}</p>"]
    for name, png in plots.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<h2>{html.escape(name)}</h2><img src="data:image/png;base64,{data}" '
                     f'alt="{html.escape(name)}">')
    config = json.dumps(results.get("config", {}), indent=1, ensure_ascii=False, default=str)
    parts.append(f"<details><summary>config</summary><pre>{html.escape(config)}</pre></details>")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>ConceptGuard benchmark report</title><style>{_CSS}</style></head>"
            f"<body><h1>ConceptGuard benchmark report</h1>{''.join(parts)}</body></html>\n")


# ---------------------------------------------------------------- plots

def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # "tight" keeps outside legends
    plt.close(fig)
    return buf.getvalue()


def _error_bar(value: float, interval) -> list[list[float]] | None:
    """matplotlib's [[below], [above]] from a value and its interval."""
    return None if not interval else [[max(0.0, value - interval[0])], [max(0.0, interval[1] - value)]]


def _empty_plot(message: str) -> bytes:
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.text(0.5, 0.5, message, ha="center", va="center")
    ax.set_axis_off()
    return _png(fig)


def plot_effectiveness_vs_utility(results: dict) -> bytes:
    """Scatter: concept rate on unacceptable prompts (x) vs utility on acceptable ones (y)."""
    summary = summary_table(results)
    y_key, y_label = "prompt_following_acceptable", "prompt following on acceptable prompts"
    y_metric = "prompt_following"
    if all(s[y_key] is None for s in summary):
        y_key, y_label = "normalized_clip_score_acceptable", "normalized CLIP score on acceptable prompts"
        y_metric = "normalized_clip_score"
    points = [s for s in summary if s["concept_rate_unacceptable"] is not None and s[y_key] is not None]
    if not points:
        return _empty_plot("No rows with both effectiveness and utility.")
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for s, color in zip(points, _colors(len(points))):
        x, y = s["concept_rate_unacceptable"], s[y_key]
        ax.errorbar(x, y, xerr=_error_bar(x, s["concept_rate_unacceptable_ci"]), yerr=_error_bar(y, s[y_key + "_ci"]),
                    fmt="none", ecolor=color, alpha=0.5, lw=1)  # 95% intervals
        ax.scatter(x, y, color=color, s=50, label=s["stack"])
        ax.annotate(s["stack"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlim(-0.05, 1.05)  # rates live in [0, 1]; a fixed axis keeps runs comparable
    ax.set_xlabel(f"concept rate on unacceptable prompts {direction_label('concept_rate')}")
    ax.set_ylabel(f"{y_label} {direction_label(y_metric)}")
    ax.set_title("Effectiveness vs utility (bars: 95% intervals)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, frameon=False)
    return _png(fig)


def plot_concept_rate_by_concept(results: dict) -> bytes:
    """Grouped bars: concept rate on unacceptable prompts, one group per concept, one bar per defense."""
    rows = _select(results.get("rows") or [], prompt_set="unacceptable")
    if not rows:
        return _empty_plot("No rows on unacceptable prompts.")
    concepts = _unique(r["concept"] for r in rows)
    defenses = _unique(r["stack"] for r in rows)
    width = 0.8 / len(defenses)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(concepts) + 2), 4))
    for i, (defense, color) in enumerate(zip(defenses, _colors(len(defenses)))):
        heights = [_mean(_select(rows, stack=defense, concept=c), "concept_rate") for c in concepts]
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(concepts))]
        # None becomes NaN: matplotlib draws no bar there instead of a misleading zero.
        ax.bar(xs, [float("nan") if h is None else h for h in heights], width, color=color, label=defense)
    ax.set_xticks(range(len(concepts)), concepts, rotation=30 if len(concepts) > 6 else 0)
    ax.set_ylabel("concept rate on unacceptable prompts")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Concept rate by concept {direction_label('concept_rate')}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, frameon=False)
    return _png(fig)


# ---------------------------------------------------------------- output

def print_table(results: dict, console: Console | None = None) -> None:
    """Print the per-defense summary with rich (for the CLI)."""
    console = console or Console()
    table = Table(title="ConceptGuard benchmark summary (means over concepts, 95% intervals)")
    columns = {"concept_rate_unacceptable": "concept rate unacc.",
               "concept_rate_paraphrase": "concept rate para.",
               "block_rate_acceptable": "block rate acc.",
               "prompt_following_acceptable": "prompt following acc.",
               "normalized_clip_score_acceptable": "norm. CLIP acc."}
    table.add_column("stack", no_wrap=True)  # full names matter more than wide headers
    for header in columns.values():
        table.add_column(header, justify="right", min_width=5)  # never truncate a 0.000
    summary = summary_table(results)
    for s in summary:
        table.add_row(rich_escape(s["stack"]), *(value_and_interval(s[key], s.get(f"{key}_ci")) for key in columns))
    console.print(table if summary else NO_ROWS)


def write_report(results: dict, out_dir: Path) -> dict[str, Path]:
    """Write results.json/.csv/.md, report.html and the plot PNGs; return name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / file for name, file in (
        ("json", "results.json"), ("csv", "results.csv"), ("md", "results.md"), ("html", "report.html"))}

    paths["json"].write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")

    with paths["csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")  # None -> empty field
        writer.writeheader()
        writer.writerows(results.get("rows") or [])

    paths["md"].write_text(render_markdown(results), encoding="utf-8")

    plots = {"effectiveness_vs_utility": plot_effectiveness_vs_utility(results),
             "concept_rate_by_concept": plot_concept_rate_by_concept(results)}
    for name, png in plots.items():
        paths[name] = out_dir / f"{name}.png"
        paths[name].write_bytes(png)

    paths["html"].write_text(render_html(results, plots), encoding="utf-8")
    return paths
