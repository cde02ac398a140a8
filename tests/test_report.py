"""The benchmark report: files written, contents, summary means, degenerate inputs (no models)."""

import csv
import json

import pytest
from matplotlib.text import Text
from rich.console import Console

from conceptguard.eval.report import (
    COLUMNS,
    concept_rate_by_concept_figure,
    effectiveness_vs_utility_figure,
    label_positions,
    print_table,
    summary_table,
    write_report,
)

DEFENSES = ("none", "blocklist", "sanitizer+espresso-ft")
CONCEPTS = ("cat", "van_gogh")
PROMPT_SETS = ("unacceptable", "paraphrase", "acceptable")
JUDGES = {"concept_rate": "oracle (p > 0.5)", "prompt_following": "oracle prompt following",
          "normalized_clip_score": "CLIP score (mini CLIP)"}


def _row(defense, concept, prompt_set, concept_rate, block_rate=0.0, prompt_following=None,
         normalized_clip_score=None, clip_accuracy=None) -> dict:
    return {"stack": defense, "concept": concept, "prompt_set": prompt_set, "n_images": 8,
            "concept_rate": concept_rate, "clip_accuracy": clip_accuracy, "block_rate": block_rate,
            "normalized_clip_score": normalized_clip_score, "prompt_following": prompt_following,
            "fd": None, "seconds": 1.5}


def make_results() -> dict:
    rows = [
        # "none": the hand-computed case in test_summary_table_means.
        _row("none", "cat", "unacceptable", 0.9, clip_accuracy=0.8),
        _row("none", "van_gogh", "unacceptable", 0.7),
        _row("none", "cat", "paraphrase", 0.8),
        _row("none", "van_gogh", "paraphrase", 0.6),
        _row("none", "cat", "acceptable", 0.1, block_rate=0.0, prompt_following=0.6, normalized_clip_score=0.9),
        _row("none", "van_gogh", "acceptable", 0.0, block_rate=0.25, prompt_following=None,
             normalized_clip_score=0.7),
    ]
    for defense, rate in (("blocklist", 0.4), ("sanitizer+espresso-ft", 0.1)):
        for concept in CONCEPTS:
            rows.append(_row(defense, concept, "unacceptable", rate))
            rows.append(_row(defense, concept, "paraphrase", rate + 0.2))
            rows.append(_row(defense, concept, "acceptable", 0.0, block_rate=0.1,
                             prompt_following=None, normalized_clip_score=None))
    return {"config": {"seed": 0, "defenses": list(DEFENSES), "nested": {"steps": 4}},
            "rows": rows, "judges": JUDGES}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    results = make_results()
    return results, write_report(results, tmp_path_factory.mktemp("report"))


def test_every_file_is_written(written):
    _, paths = written
    names = {p.name for p in paths.values()}
    assert names == {"results.json", "results.csv", "results.md", "report.html",
                     "effectiveness_vs_utility.png", "concept_rate_by_concept.png"}
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0
    assert paths["effectiveness_vs_utility"].read_bytes().startswith(b"\x89PNG")


def test_json_round_trips(written):
    results, paths = written
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == results


def test_csv_has_header_and_one_line_per_row(written):
    results, paths = written
    with paths["csv"].open(newline="", encoding="utf-8") as f:
        lines = list(csv.reader(f))
    assert lines[0] == list(COLUMNS)
    assert len(lines) == 1 + len(results["rows"])
    assert lines[1][:3] == ["none", "cat", "unacceptable"]
    assert lines[1][COLUMNS.index("fd")] == ""  # None -> empty field


def test_markdown_has_tables_defenses_and_judges(written):
    _, paths = written
    md = paths["md"].read_text(encoding="utf-8")
    for name in (*DEFENSES, *CONCEPTS, *PROMPT_SETS, "mean"):
        assert name in md
    assert "Judges: concept_rate: oracle (p > 0.5)" in md
    assert "prompt_following: oracle prompt following; normalized_clip_score: CLIP score (mini CLIP)" in md
    assert "| none | 0.900 | 0.700 | 0.800 [" in md  # unacceptable: per concept, then the mean with its interval
    assert "| none | 0.600 / 0.900 | – / 0.700 | 0.600 / 0.800 |" in md  # acceptable, with a None


def test_html_has_plots_n_per_cell_block_rates_and_the_run(written):
    _, paths = written
    page = paths["html"].read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == 2
    for name in DEFENSES:
        assert name in page
    assert "<table>" in page and "oracle (p &gt; 0.5)" in page
    assert "n=8</span>" in page and "n=16</span>" in page  # a concept's cell and the mean over two
    assert "<th>block rate</th>" in page and "block rate unacc." in page
    assert "<h3>config</h3><pre>" in page and "&quot;steps&quot;: 4" in page  # shown, not collapsed


def test_html_shows_sample_strips_and_metadata(tmp_path):
    results = make_results()
    for i, row in enumerate(results["rows"]):
        row["samples"] = [{"image": f"images/{i}-{k}.png", "prompt": f"prompt <{k}>", "blocked": k == 1}
                          for k in range(3)]
    results["meta"] = {"created": "2026-12-02T10:00:00+00:00", "python": "3.11.2",
                       "versions": {"conceptguard": "0.9.0", "torch": "2.13.0"}}
    page = write_report(results, tmp_path)["html"].read_text(encoding="utf-8")
    assert page.count('loading="lazy"') == 3 * len(results["rows"])
    assert 'src="images/0-0.png" title="prompt &lt;0&gt;"' in page
    assert page.count("class=blocked") == len(results["rows"])
    assert "<td>torch</td><td>2.13.0</td>" in page and "2026-12-02T10:00:00+00:00" in page


def test_label_positions_keep_their_gap_and_the_axes():
    ys = [0.5, 0.5, 0.5, 0.98, 0.99, 1.0, 0.0]
    placed = label_positions(ys, 0.1)
    ordered = sorted(placed)
    assert all(b - a >= 0.1 - 1e-9 for a, b in zip(ordered, ordered[1:]))
    assert all(0.0 <= y <= 1.0 for y in placed)
    assert placed[6] == 0.0  # a label with room stays at its point
    # the points' order is kept (ties in input order)
    assert [ys.index(y) for y in ys] and sorted(range(7), key=lambda i: placed[i]) == [6, 0, 1, 2, 3, 4, 5]


def _extents(fig, texts):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [Text.get_window_extent(t, renderer) for t in texts]  # the text alone, not its leader line


def test_scatter_labels_never_overlap_even_on_one_point():
    results = make_results()
    for defense in ("uce", "esd-x", "steerdiff", "allbutone", "espresso", "sld-max"):  # many on one spot
        for concept in CONCEPTS:
            results["rows"].append(_row(defense, concept, "unacceptable", 0.4))
            results["rows"].append(_row(defense, concept, "acceptable", 0.0, prompt_following=0.6))
    for row in results["rows"]:
        if row["stack"] == "blocklist" and row["prompt_set"] == "acceptable":
            row["prompt_following"] = 0.6  # blocklist at 0.4 / 0.6 as well
    fig = effectiveness_vs_utility_figure(results)
    labels = [t for t in fig.axes[0].texts if t.get_gid() == "point-label"]
    assert {t.get_text() for t in labels} >= {"blocklist", "uce", "esd-x", "steerdiff"}
    boxes = _extents(fig, labels)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b)


def test_bars_show_a_defense_whose_rate_is_zero_everywhere():
    results = make_results()
    for row in results["rows"]:
        if row["stack"] == "sanitizer+espresso-ft":
            row["concept_rate"] = 0.0
    fig = concept_rate_by_concept_figure(results)
    values = [line for line in fig.axes[0].lines
              if line.get_gid() == "value-sanitizer+espresso-ft" and line.get_marker() == "o"]
    assert len(values) == len(CONCEPTS)  # a dot at 0 per concept, where the bar has no height
    assert all(list(line.get_ydata()) == [0.0] and line.get_marker() == "o" for line in values)


def test_summary_table_means():
    summary = {s["stack"]: s for s in summary_table(make_results())}
    assert list(summary) == list(DEFENSES)
    none = summary["none"]
    assert none["concept_rate_unacceptable"] == pytest.approx(0.8)
    assert none["concept_rate_paraphrase"] == pytest.approx(0.7)
    assert none["block_rate_acceptable"] == pytest.approx(0.125)
    assert none["prompt_following_acceptable"] == pytest.approx(0.6)  # the None is skipped
    assert none["normalized_clip_score_acceptable"] == pytest.approx(0.8)
    assert summary["blocklist"]["concept_rate_paraphrase"] == pytest.approx(0.6)
    assert summary["blocklist"]["prompt_following_acceptable"] is None


def test_print_table_lists_every_defense():
    console = Console(record=True, width=200)
    print_table(make_results(), console)
    text = console.export_text()
    for name in DEFENSES:
        assert name in text


def test_empty_rows_do_not_crash(tmp_path):
    results = {"config": {}, "rows": []}
    paths = write_report(results, tmp_path)
    for path in paths.values():
        assert path.stat().st_size > 0
    assert "No rows" in paths["md"].read_text(encoding="utf-8")
    assert "No rows" in paths["html"].read_text(encoding="utf-8")
    assert summary_table(results) == []
    print_table(results, Console(record=True))


def test_single_defense_all_none_and_escaped_names(tmp_path):
    rows = [_row("<b>x&y</b>", "cat", "unacceptable", None),
            _row("<b>x&y</b>", "cat", "adversarial:pez", 0.5),
            _row("<b>x&y</b>", "cat", "acceptable", None, block_rate=None)]
    paths = write_report({"config": {}, "rows": rows}, tmp_path)
    page = paths["html"].read_text(encoding="utf-8")
    assert "&lt;b&gt;x&amp;y&lt;/b&gt;" in page and "<b>x&y</b>" not in page
    md = paths["md"].read_text(encoding="utf-8")
    assert "adversarial:pez" in md and "–" in md
    assert md.index("adversarial:pez") < md.index("## acceptable")


def test_many_defenses(tmp_path):
    rows = [_row(f"defense-{i}", c, s, i / 20, prompt_following=1 - i / 20)
            for i in range(14) for c in CONCEPTS for s in PROMPT_SETS]
    paths = write_report({"config": {}, "rows": rows}, tmp_path)
    assert len(summary_table({"rows": rows})) == 14
    assert paths["concept_rate_by_concept"].stat().st_size > 0
