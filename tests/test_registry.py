"""One registry pattern, the stack value, `--set` overrides, `load_defense` and `conceptguard train`."""

import json
from dataclasses import dataclass

import pytest

from conceptguard.attacks import ATTACKS
from conceptguard.defenses import DEFENSES, DefenseStack
from conceptguard.defenses.registry import apply_overrides
from conceptguard.errors import ConfigError, InvalidInputError
from conceptguard.eval.judges import JUDGES
from conceptguard.registry import Registry
from conftest import run_cli


def test_registry_refuses_a_duplicate_and_lists_the_known_names():
    reg: Registry = Registry("widget")
    reg.register("b", size=2)(object)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("b")(int)
    reg.register("a")(str)
    assert reg.get("b") == (object, {"size": 2}) and reg.names() == ("a", "b")
    with pytest.raises(ConfigError, match="unknown widget 'c'; known: a, b"):
        reg.get("c")


def test_every_defense_attack_and_judge_is_registered():
    assert {"blocklist", "negative-prompt", "sld-weak", "sld-max", "safety-checker", "esd-x", "esd-u", "uce",
            "espresso", "espresso-ft", "sanitizer", "sanitizer-a0.5", "steerdiff", "steerdiff-spans",
            "steerdiff-e1", "allbutone"} <= set(DEFENSES.names())
    assert set(ATTACKS.names()) == {"synonym", "typo+", "pez", "pez+", "ringabell", "ringabell+", "unlearndiff",
                                    "unlearndiff+", "cce",
                                    "cce+", "sneaky"}
    assert set(JUDGES.names()) == {"oracle", "clip", "nudenet", "q16"}


def test_a_stack_is_one_value_written_a_plus_b():
    assert DefenseStack.parse("none").names == () and DefenseStack.parse("none").label == "none"
    assert DefenseStack.parse(" blocklist + uce ").label == "blocklist+uce"
    with pytest.raises(ConfigError, match="unknown defense 'magic'"):
        DefenseStack.parse("blocklist+magic")


@dataclass(frozen=True)
class _Recipe:
    steps: int = 10
    lr: float = 1e-3
    lora: bool = False
    alternative: str | None = None


def test_overrides_are_typed_by_the_defaults_and_unknown_keys_refused():
    got = apply_overrides(_Recipe(), {"steps": "3", "lr": "0.5", "lora": "true", "alternative": "a calm heart"})
    assert got == _Recipe(3, 0.5, True, "a calm heart")
    assert apply_overrides({"lam": 0.5}, {"lam": "1"}) == {"lam": 1.0}
    with pytest.raises(ConfigError, match="unknown setting 'stepz'; this method's settings: steps, lr"):
        apply_overrides(_Recipe(), {"stepz": "3"})
    with pytest.raises(ConfigError, match="not a int"):
        apply_overrides(_Recipe(), {"steps": "many"})


def test_settings_per_defense_and_attack_replace_the_preset(pipe, mini, tmp_path):
    """A bench config's `defense_settings` / `attack_settings`: typed by the preset, unknown keys
    and methods without settings refused, the rest of the preset kept."""
    from conceptguard.attacks import get_attack
    from conceptguard.defenses.registry import BuildContext, build_defenses

    pez = get_attack("pez", "paper", {"iterations": 7})
    assert pez.budget.iterations == 7 and pez.budget.lr == get_attack("pez", "paper").budget.lr
    with pytest.raises(ConfigError, match="pez budget: iters: Extra inputs"):
        get_attack("pez", "cpu", {"iters": 7})
    ctx = BuildContext(pipe, mini, tmp_path)
    with pytest.raises(ConfigError, match="blocklist has no hyper-parameters"):
        build_defenses("blocklist", mini.concept("burning"), ctx, {"blocklist": {"words": 3}})
    with pytest.raises(ConfigError, match="unknown setting 'lamb'"):
        build_defenses("blocklist+uce", mini.concept("burning"), ctx, {"uce": {"lamb": 0.1}})
    assert ctx.overrides == {}  # a derived context never changes the shared one


def test_load_defense_reads_any_saved_kind(pipe, tmp_path):
    from conceptguard import build_stack, load_defense

    [uce] = build_stack("uce", "burning", pipe, cache=tmp_path / "cache")
    uce.save_pretrained(tmp_path / "uce")
    loaded = load_defense(tmp_path / "uce")
    assert type(loaded) is type(uce) and loaded.config["concept"] == "burning"
    config = json.loads((tmp_path / "uce" / "config.json").read_text())
    (tmp_path / "uce" / "config.json").write_text(json.dumps({**config, "kind": "teapot"}))
    with pytest.raises(InvalidInputError, match="unknown defense kind 'teapot'"):
        load_defense(tmp_path / "uce")


@pytest.mark.parametrize("args, fragment", [
    (("magic",), "unknown method 'magic'"),
    (("esd", "--variant", "q"), "--variant must be x or u"),
    (("uce", "--set", "lam"), "--set takes key=value"),
])
def test_train_refuses_bad_input_in_one_line(tmp_path, args, fragment):
    out = run_cli("train", *args, "--concept", "burning", "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and fragment in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_train_saves_what_the_bench_would_build(tmp_path):
    env_cache = tmp_path / "cache"
    out = run_cli("train", "uce", "--concept", "burning", "--out", str(tmp_path / "uce"), "--set", "lam=0.25",
                  "--json", env={"CONCEPTGUARD_CACHE": str(env_cache)})
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["method"] == "uce" and summary["settings"] == {"lam": "0.25"}
    assert json.loads((tmp_path / "uce" / "config.json").read_text())["lam"] == 0.25
    assert list((env_cache / "defenses").iterdir())  # the same cache the bench uses
