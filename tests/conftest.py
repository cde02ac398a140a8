import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pipe():
    from conceptguard.models import load_pipeline

    return load_pipeline()


@pytest.fixture(scope="session")
def clip_and_processor():
    from conceptguard.models import load_clip

    return load_clip()


@pytest.fixture(scope="session")
def oracle():
    from conceptguard.models import load_oracle

    return load_oracle()


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess (exit codes and stderr as a user sees them)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "conceptguard", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="session")
def mini():
    """The mini world's domain (prompts, training text, renders)."""
    from conceptguard.miniworld.domain import MiniWorld

    return MiniWorld()
