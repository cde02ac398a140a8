"""The audit set: its split, the judge-quality arithmetic on constructed cases with known answers,
label-file errors, and the sheets -> labels -> score round trip through the CLI."""

from __future__ import annotations

import json

import pytest

from conceptguard.errors import InvalidInputError
from conceptguard.eval.audit import AuditItem, Quality, corrected_rate, quality, read_labels, split_of, write_labels
from conftest import run_cli


def _item(key: str, concept: str, label: str) -> AuditItem:
    return AuditItem(key, concept, "none", "unacceptable", "p", 0, "x.png", 0, 0, split_of(key), label)


def test_the_split_is_fixed_by_the_key_and_about_half():
    keys = [f"k{i}" for i in range(2000)]
    assert [split_of(k) for k in keys] == [split_of(k) for k in keys]
    assert 900 < sum(split_of(k) == "test" for k in keys) < 1100


def test_the_sample_of_one_concept_does_not_depend_on_the_others():
    from conceptguard.eval.audit import make_items, sample

    rows = [{"key": f"{c}-{s}-{i}", "concept": c, "stack": s, "prompt_set": "unacceptable", "prompt": "p", "seed": i,
             "image": "x.png", "blocked": i == 0} for c in ("burning", "zorbo") for s in ("none", "uce") for i in range(9)]
    alone = make_items(sample([r for r in rows if r["concept"] == "zorbo"], 3, 0), 4, 0)
    together = [i for i in make_items(sample(rows, 3, 0), 4, 0) if i.concept == "zorbo"]
    assert alone == together and len(alone) == 6 and not any(i.key.endswith("-0") for i in alone)
    assert [(i.sheet, i.tile) for i in alone] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]


def test_quality_counts_against_labels_on_one_part_only():
    keys = [k for k in (f"k{i}" for i in range(400)) if split_of(k) == "test"][:10]
    train_key = next(k for k in (f"t{i}" for i in range(100)) if split_of(k) == "train")
    items = [_item(keys[i], "burning", "present") for i in range(4)]  # judged: yes yes yes no
    items += [_item(keys[i], "burning", "absent") for i in range(4, 8)]  # judged: yes no no no
    items += [_item(keys[8], "burning", "unclear"), _item(train_key, "burning", "present")]
    judged = {k: i in (0, 1, 2, 4) for i, k in enumerate(keys)} | {train_key: False}
    (q,) = quality(items, judged, "test")
    assert (q.n, q.tp, q.fp, q.fn, q.tn) == (8, 3, 1, 1, 3)
    assert q.precision == q.recall == 0.75 and q.specificity == 0.75
    assert q.as_dict()["recall_ci"] == [round(x, 4) for x in q.recall_ci]


def test_no_positives_leaves_recall_unmeasured():
    q = Quality("zorbo", 3, tp=0, fp=0, fn=0, tn=3)
    assert q.recall is None and q.recall_ci is None and q.specificity == 1.0


def test_rogan_gladen_correction_on_known_answers():
    fixed, ci = corrected_rate(0.5, (0.3, 0.7), recall=0.8, specificity=0.9)
    assert fixed == pytest.approx(0.4 / 0.7) and ci == pytest.approx((0.2 / 0.7, 0.6 / 0.7))
    assert corrected_rate(0.05, None, recall=0.8, specificity=0.9) == (0.0, None)  # below the false-positive floor
    assert corrected_rate(1.0, (0.9, 1.0), recall=0.8, specificity=1.0)[0] == 1.0  # clipped
    assert corrected_rate(0.5, None, recall=0.5, specificity=0.5) is None  # a judge at chance corrects nothing
    perfect = corrected_rate(0.25, (0.1, 0.5), recall=1.0, specificity=1.0)
    assert perfect[0] == 0.25 and perfect[1] == pytest.approx((0.1, 0.5))


def test_label_files_round_trip_and_bad_rows_name_their_line(tmp_path):
    items = [_item("a", "burning", "present"), _item("b", "zorbo", "absent")]
    write_labels(items, tmp_path / "l.csv")
    assert read_labels(tmp_path / "l.csv") == items
    text = (tmp_path / "l.csv").read_text().replace(",absent", ",maybe")
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(InvalidInputError, match=r"bad.csv:3: label 'maybe'"):
        read_labels(tmp_path / "bad.csv")
    with pytest.raises(InvalidInputError, match="cannot read"):
        read_labels(tmp_path / "missing.csv")


@pytest.mark.slow
def test_sheets_then_labels_then_score_through_the_cli(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("defenses: [none, sld-max]\nconcepts: [burning]\nprompts_per_set: 4\nseed: 3\n")
    run = tmp_path / "run"
    assert run_cli("bench", "--config", str(cfg), "--out", str(run)).returncode == 0
    done = run_cli("audit", "sheets", str(run), "--out", str(tmp_path / "s"), "--per-sheet", "10")
    assert done.returncode == 0, done.stderr
    items = read_labels_blank(tmp_path / "s" / "labels.csv")
    assert len(items) == 2 * (4 + 4 + 2)  # per stack: every unacceptable and paraphrase image, 2 acceptable
    assert (tmp_path / "s" / "sheet-burning-0.png").is_file()
    assert (tmp_path / "s" / "reference-burning.png").is_file()
    # label every image as the prompt asked (a stand-in for looking): unacceptable/paraphrase present
    labelled = [AuditItem(**{**i.__dict__, "label": "absent" if i.prompt_set == "acceptable" else "present"})
                for i in items]
    write_labels(labelled, tmp_path / "labels.csv")
    out = run_cli("audit", "score", str(run), "--labels", str(tmp_path / "labels.csv"), "--judge", "oracle",
                  "--write", str(tmp_path / "q.json"), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report == json.loads((tmp_path / "q.json").read_text())
    test = report["judges"]["oracle"]["test"]["burning"]
    assert test["n"] == sum(i.split == "test" for i in labelled) and report["labels"] == 20
    bad = run_cli("audit", "score", str(tmp_path), "--labels", str(tmp_path / "labels.csv"))
    assert bad.returncode == 2 and "labelled images are not in" in bad.stderr

    # the oracle learns from the train part only: with the test part's images gone it still tunes
    import shutil

    from conceptguard.miniworld.paths import WEIGHTS_DIR, fingerprint, verify

    root = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, root, symlinks=True)
    for i in labelled:
        if i.split == "test":
            (run / i.image).unlink()
    tuned = run_cli("audit", "tune-oracle", str(run), "--labels", str(tmp_path / "labels.csv"), "--root", str(root),
                    "--steps", "3")
    assert tuned.returncode == 0, tuned.stderr
    assert fingerprint(root / "oracle") != fingerprint(WEIGHTS_DIR / "oracle")
    verify(root / "oracle", root)  # the manifest names the new weights
    assert run_cli("audit", "score", str(run), "--labels", str(tmp_path / "labels.csv")).returncode == 2


def test_the_cli_tunes_the_oracle_as_the_recipe_says():
    from conceptguard.cli.audit import TUNING_STEPS
    from conceptguard.miniworld.oracle_tuning import TUNING

    assert TUNING_STEPS == TUNING.steps


def read_labels_blank(path):
    """Labels as written by `audit sheets` (label blank): read with a placeholder label."""
    text = path.read_text().splitlines()
    filled = [text[0]] + [line + "unclear" for line in text[1:]]
    path.with_name("filled.csv").write_text("\n".join(filled) + "\n")
    return read_labels(path.with_name("filled.csv"))


def test_the_shipped_labels_and_their_measurement_belong_to_the_shipped_judges():
    from conceptguard.miniworld.domain import JUDGE_WEIGHTS, QUALITY, MiniWorld
    from conceptguard.miniworld.paths import AUDIT_DIR

    items = read_labels(AUDIT_DIR / "labels.csv")  # splits checked against the keys while reading
    assert len({i.key for i in items}) == len(items) and {i.split for i in items} == {"train", "test"}
    measured = json.loads((AUDIT_DIR / QUALITY).read_text())
    assert measured["labels"] == len(items)
    for judge in ("oracle", "clip"):
        assert measured["judges"][judge]["weights"] == JUDGE_WEIGHTS[judge](), f"re-run `audit score` for {judge}"
        assert set(MiniWorld().judge_quality(judge)) == {i.concept for i in items}
