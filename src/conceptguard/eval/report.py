"""Write the benchmark report (JSON, CSV, Markdown, HTML, plots) from a results dict.

The results dict is a public contract:

    {"config": {...},
     "rows": [{"stack", "concept", "prompt_set", "n_images", "concept_rate", "clip_accuracy",
               "block_rate", "normalized_clip_score", "prompt_following", "fd", "fid", "seconds"}, ...],
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
           "block_rate", "normalized_clip_score", "prompt_following", "fd", "fid", "seconds",
           "concept_rate_ci", "clip_accuracy_ci", "block_rate_ci", "normalized_clip_score_ci",
           "prompt_following_ci", "fd_ci", "fid_ci", "asr_best_of_n", "asr_best_of_n_ci", "asr_cumulative",
           "asr_cumulative_ci")
# On acceptable prompts the question is utility; on every other set it is whether the concept shows.
ACCEPTABLE_METRICS = ("prompt_following", "normalized_clip_score", "fid")  # those measured
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
            "block_rate_unacceptable": _mean(unacceptable, "block_rate"),
            "block_rate_acceptable": _mean(acceptable, "block_rate"),
            "prompt_following_acceptable": _mean(acceptable, "prompt_following"),
            "normalized_clip_score_acceptable": _mean(acceptable, "normalized_clip_score"),
            "concept_rate_unacceptable_ci": pooled_interval(unacceptable),
            "concept_rate_paraphrase_ci": pooled_interval(_select(mine, prompt_set="paraphrase")),
            "n_images": sum(r["n_images"] for r in mine),
            "block_rate_unacceptable_ci": pooled_interval(unacceptable, "block_rate"),
            "block_rate_acceptable_ci": pooled_interval(acceptable, "block_rate"),
            "prompt_following_acceptable_ci": pooled_interval(acceptable, "prompt_following"),
            "normalized_clip_score_acceptable_ci": mean_interval(acceptable, "normalized_clip_score"),
        })
    return summary


def _fmt(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3f}"


# ---------------------------------------------------------------- intervals

RATES = ("concept_rate", "block_rate", "prompt_following", "asr_cumulative")  # shares of images: Wilson intervals pool


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
    """One prompt set's table as strings, rendered to both Markdown and HTML: a column per concept,
    their mean, and the share of images blocked (all concepts pooled); `counts` holds each
    cell's number of images."""

    prompt_set: str
    metrics: tuple[str, ...]
    header: list[str]
    body: list[list[str]]
    counts: list[list[int]]
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
        body, counts = [], []
        for defense in defenses:
            mine = _select(in_set, stack=defense)
            cells = [_select(mine, concept=c) for c in concepts] + [mine]
            body.append([defense, *(_cell(c, metrics) for c in cells), with_interval(mine, "block_rate")])
            counts.append([sum(r["n_images"] for r in c) for c in cells] + [sum(r["n_images"] for r in mine)])
        named = [f"{m}: {judges[m]}" for m in metrics if judges.get(m)]
        tables.append(_Table(prompt_set, metrics, ["stack", *concepts, "mean", "block rate"], body, counts,
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
    body = "".join("<tr>" + f"<td>{esc(row[0])}</td>" + "".join(
        f'<td>{esc(c)}<br><span class="n">n={n}</span></td>' for c, n in zip(row[1:], counts)) + "</tr>"
        for row, counts in zip(t.body, t.counts))
    judges = f'<p class="judges">Judges: {esc(t.judges)}</p>' if t.judges else ""
    return (f"<h2>{esc(t.prompt_set)}: {esc(' / '.join(t.metrics))}</h2>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{judges}")


SUMMARY_COLUMNS = {"concept_rate_unacceptable": "concept rate unacc.",
                   "concept_rate_paraphrase": "concept rate para.",
                   "block_rate_unacceptable": "block rate unacc.",
                   "block_rate_acceptable": "block rate acc.",
                   "prompt_following_acceptable": "prompt following acc.",
                   "normalized_clip_score_acceptable": "norm. CLIP acc."}


def _html_summary(results: dict) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in ("stack", *SUMMARY_COLUMNS.values(), "images"))
    body = "".join("<tr>" + f"<td>{esc(s['stack'])}</td>" + "".join(
        f"<td>{esc(value_and_interval(s[k], s.get(f'{k}_ci')))}</td>" for k in SUMMARY_COLUMNS)
        + f"<td>{s['n_images']}</td></tr>" for s in summary_table(results))
    return ("<h2>Summary: means over concepts, 95% intervals</h2>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _html_metadata(results: dict) -> str:
    """The run's software, date and the config's main settings, then the whole config."""
    meta = results.get("meta") or {}
    config = results.get("config") or {}
    facts = [("created", meta.get("created")), ("python", meta.get("python")), ("platform", meta.get("platform"))]
    facts += [(name, version) for name, version in (meta.get("versions") or {}).items()]
    facts += [(key, config.get(key)) for key in ("model", "seed", "num_inference_steps", "guidance_scale",
                                                  "prompts_per_set", "images_per_prompt", "attack_budget")
              if key in config]
    facts += [("wall time (s)", results.get("seconds"))]
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in facts
                   if v is not None)
    text = json.dumps(config, indent=1, ensure_ascii=False, default=str)
    return (f'<h2>Run</h2><table class="meta"><tbody>{rows}</tbody></table>'
            f"<h3>config</h3><pre>{html.escape(text)}</pre>")


def _html_samples(results: dict) -> str:
    """Per prompt set a table of image strips, one per (stack, concept): the images themselves
    (linked from the run's images/ folder), the prompt on hover, blocked ones marked."""
    esc = html.escape
    rows = [r for r in results.get("rows") or [] if r.get("samples")]
    if not rows:
        return ""
    parts = ["<h2>Samples</h2><p>The first image of the first prompts of each cell (hover: prompt; "
             "a red frame: blocked, the image shown is what the user got).</p>"]
    for i, prompt_set in enumerate(_prompt_sets(rows)):
        in_set = _select(rows, prompt_set=prompt_set)
        concepts = _unique(r["concept"] for r in in_set)
        head = "".join(f"<th>{esc(c)}</th>" for c in ("stack", *concepts))
        body = ""
        for stack in _unique(r["stack"] for r in in_set):
            cells = []
            for concept in concepts:
                found = _select(in_set, stack=stack, concept=concept)
                strip = "".join(
                    f'<img src="{esc(x["image"])}" title="{esc(x["prompt"])}{" (blocked)" if x["blocked"] else ""}" '
                    f'alt="{esc(x["prompt"])}" loading="lazy"{" class=blocked" if x["blocked"] else ""}>'
                    for x in (found[0]["samples"] if found else []))
                cells.append(f'<td class="strip">{strip}</td>')
            body += f"<tr><td>{esc(stack)}</td>{''.join(cells)}</tr>"
        parts.append(f"<details{' open' if i == 0 else ''}><summary>{esc(prompt_set)}</summary>"
                     f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></details>")
    return "".join(parts)


_CSS = ("body{font-family:sans-serif;margin:2em;max-width:90em}"
        "table{border-collapse:collapse;margin-bottom:.5em}"
        "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
        "th:first-child,td:first-child{text-align:left}"
        ".judges{color:#555;font-size:90%}.n{color:#777;font-size:80%}"
        "img{max-width:100%}td.strip{text-align:left;min-width:13.5em}"
        "td.strip img{width:48px;height:48px;image-rendering:pixelated;margin:1px;border:2px solid transparent}"
        "td.strip img.blocked{border-color:#c00}table.meta td{text-align:left}")


def render_html(results: dict, plots: dict[str, bytes]) -> str:
    """One page: the judge's measured quality, a summary, a table per prompt set (intervals and n
    per cell), the plots (base64 PNG), sample strips and the run's metadata and config."""
    tables = _build_tables(results)
    parts = [f'<p class="judges">{html.escape(judge_quality_line(results))}</p>']
    if tables:
        parts.append(_html_summary(results))
    parts += [_html_table(t) for t in tables] or [f"<p>{html.escape(NO_ROWS)}</p>"]
    for name, png in plots.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<h2>{html.escape(name)}</h2><img src="data:image/png;base64,{data}" '
                     f'alt="{html.escape(name)}">')
    parts.append(_html_samples(results))
    parts.append(_html_metadata(results))
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<link rel=\"icon\" href=\"data:,\"><title>ConceptGuard benchmark report</title><style>{_CSS}</style></head>"
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


LABEL_GAP = 0.06  # label spacing in axes fractions: above an 8-point line at the figure heights below


def label_positions(ys: list[float], gap: float) -> list[float]:
    """Heights in [0, 1] for labels wanted at `ys` (axes fractions), at least `gap` apart and
    each as near its point as that allows (labels keep the points' order)."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    placed = [min(max(ys[i], 0.0), 1.0) for i in order]
    for k in range(1, len(placed)):  # push up past the label below
        placed[k] = max(placed[k], placed[k - 1] + gap)
    if placed and placed[-1] > 1.0:  # then back down from the top
        placed[-1] = 1.0
        for k in range(len(placed) - 2, -1, -1):
            placed[k] = min(placed[k], placed[k + 1] - gap)
    out = [0.0] * len(ys)
    for k, i in enumerate(order):
        out[i] = placed[k]
    return out


def effectiveness_vs_utility_figure(results: dict):
    """Scatter: concept rate on unacceptable prompts (x) vs utility on acceptable ones (y), each
    point's name in a column right of the axes with a leader line: names never overlap, even
    where points do (blocklist and UCE often sit on one spot)."""
    summary = summary_table(results)
    y_key, y_label = "prompt_following_acceptable", "prompt following on acceptable prompts"
    y_metric = "prompt_following"
    if all(s[y_key] is None for s in summary):
        y_key, y_label = "normalized_clip_score_acceptable", "normalized CLIP score on acceptable prompts"
        y_metric = "normalized_clip_score"
    points = [s for s in summary if s["concept_rate_unacceptable"] is not None and s[y_key] is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, max(4.5, 0.2 * len(points) + 1.5)))
    ys = [s[y_key] for s in points]
    ax.set_xlim(-0.05, 1.05)  # rates live in [0, 1]; a fixed axis keeps runs comparable
    lo, hi = min(ys + [0.0]), max(ys + [1.0])
    ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    y0, y1 = ax.get_ylim()
    gap = min(LABEL_GAP, 1.0 / max(1, len(points) - 1))
    heights = label_positions([(y - y0) / (y1 - y0) for y in ys], gap)
    for s, color, height in zip(points, _colors(len(points)), heights):
        x, y = s["concept_rate_unacceptable"], s[y_key]
        ax.errorbar(x, y, xerr=_error_bar(x, s["concept_rate_unacceptable_ci"]), yerr=_error_bar(y, s[y_key + "_ci"]),
                    fmt="none", ecolor=color, alpha=0.5, lw=1)  # 95% intervals
        ax.scatter(x, y, color=color, s=50)
        ax.annotate(s["stack"], (x, y), xytext=(1.04, height), textcoords="axes fraction", va="center",
                    fontsize=8, color="black", gid="point-label",
                    arrowprops={"arrowstyle": "-", "color": color, "alpha": 0.6, "lw": 0.8})
    ax.set_xlabel(f"concept rate on unacceptable prompts {direction_label('concept_rate')}")
    ax.set_ylabel(f"{y_label} {direction_label(y_metric)}")
    ax.set_title("Effectiveness vs utility (bars: 95% intervals)")
    ax.grid(alpha=0.3)
    return fig


def plot_effectiveness_vs_utility(results: dict) -> bytes:
    fig = effectiveness_vs_utility_figure(results)
    return _png(fig) if fig is not None else _empty_plot("No rows with both effectiveness and utility.")


def concept_rate_by_concept_figure(results: dict):
    """Grouped bars: concept rate on unacceptable prompts, one group per concept, one bar per
    defense, with its 95% interval and a dot at its value, so a defense at 0 still shows."""
    rows = _select(results.get("rows") or [], prompt_set="unacceptable")
    if not rows:
        return None
    concepts = _unique(r["concept"] for r in rows)
    defenses = _unique(r["stack"] for r in rows)
    width = 0.8 / len(defenses)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(concepts) + 2), 4))
    for i, (defense, color) in enumerate(zip(defenses, _colors(len(defenses)))):
        cells = [_select(rows, stack=defense, concept=c) for c in concepts]
        heights = [_mean(c, "concept_rate") for c in cells]
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(concepts))]
        # None becomes NaN: matplotlib draws no bar there instead of a misleading zero.
        ax.bar(xs, [float("nan") if h is None else h for h in heights], width, color=color, label=defense)
        for x, h, c in zip(xs, heights, cells):
            if h is not None:
                ax.errorbar(x, h, yerr=_error_bar(h, pooled_interval(c)), fmt="o", markersize=3, color=color,
                            ecolor="black", elinewidth=0.8, capsize=1.5, gid=f"value-{defense}")
    ax.set_xticks(range(len(concepts)), concepts, rotation=30 if len(concepts) > 6 else 0)
    ax.set_ylabel("concept rate on unacceptable prompts")
    ax.set_ylim(-0.03, 1.05)
    ax.set_title(f"Concept rate by concept {direction_label('concept_rate')} (whiskers: 95% intervals)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, frameon=False)
    return fig


def plot_concept_rate_by_concept(results: dict) -> bytes:
    fig = concept_rate_by_concept_figure(results)
    return _png(fig) if fig is not None else _empty_plot("No rows on unacceptable prompts.")


# ---------------------------------------------------------------- output

def print_table(results: dict, console: Console | None = None) -> None:
    """Print the per-defense summary with rich (for the CLI)."""
    console = console or Console()
    table = Table(title="ConceptGuard benchmark summary (means over concepts, 95% intervals)")
    columns = {k: v for k, v in SUMMARY_COLUMNS.items() if k != "block_rate_unacceptable"}  # fits 120 columns
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
