"""Choosing where models run: --device/--dtype on every command, a bench config's device/dtype,
one-line errors for a device this machine lacks, and a real model that names no CLIP."""

import pytest
import torch
from PIL import Image

from conceptguard.domain import RealModels
from conceptguard.errors import ConceptGuardError, InvalidInputError
from conceptguard.eval.config import BenchConfig, load_config
from conceptguard.models import resolve_device, resolve_dtype
from conftest import run_cli

NO_CUDA = not torch.cuda.is_available()


def test_defaults_are_cuda_when_there_is_one_and_float32():
    assert resolve_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype() == torch.float32 and resolve_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(InvalidInputError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")
    with pytest.raises(InvalidInputError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA device")
@pytest.mark.parametrize("args, fragment", [
    (("--device", "cuda", "generate", "a red heart", "--out", "OUT"), "has no CUDA device"),
    (("--dtype", "float8", "generate", "a red heart", "--out", "OUT"), "unknown dtype 'float8'"),
    (("--device", "tpu", "world", "info"), "unknown device 'tpu'"),
])
def test_a_device_this_machine_lacks_is_one_line_and_exit_2(tmp_path, args, fragment):
    result = run_cli(*[str(tmp_path / "out") if a == "OUT" else a for a in args])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA device")
def test_a_bench_config_names_its_device(tmp_path):
    (tmp_path / "run.yaml").write_text("device: cuda\n")
    with pytest.raises(ConceptGuardError, match="device: device 'cuda': .* no CUDA device"):
        load_config(tmp_path / "run.yaml")
    assert BenchConfig(device="cpu", dtype="float64").dtype == "float64"


@pytest.mark.slow
def test_generate_in_float64_through_the_cli(tmp_path):
    result = run_cli("--device", "cpu", "--dtype", "float64", "generate", "a burning red heart", "--n", "1",
                     "--steps", "2", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "000000.png").size == (32, 32)


def test_a_real_model_without_a_clip_names_the_clip_to_set():
    with pytest.raises(ConceptGuardError, match="openai/clip-vit-large-patch14"):
        RealModels("CompVis/stable-diffusion-v1-4").clip_id
