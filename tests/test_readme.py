"""README.md stays short and true: its Python blocks run as written, and no relative link in it or
in docs/ points at a missing file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 220

FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
# [text](target) or ![alt](target); the target ends at whitespace (an optional "title" may follow)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE = re.compile(r"^(```|~~~).*?^\1[ \t]*$|`[^`\n]*`", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[str]:
    return [m.group(1) for m in FENCE.finditer(text)]


def relative_links(text: str) -> list[str]:
    """Link targets that point into the repository (code blocks and inline code skipped)."""
    text = CODE.sub("", text)
    out = []
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        out.append(target)
    return out


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES})"


def test_readme_has_python_code() -> None:
    assert python_blocks(README.read_text(encoding="utf-8")), "README.md has no ```python block"


def test_relative_links_point_at_files() -> None:
    broken = []
    for md in markdown_files():
        for target in relative_links(md.read_text(encoding="utf-8")):
            path = unquote(target.split("#", 1)[0].split("?", 1)[0])
            if not path:
                continue
            resolved = (md.parent / path).resolve()
            if not resolved.exists():
                broken.append(f"{md.relative_to(ROOT)}: {target}")
            elif ROOT not in (resolved, *resolved.parents):
                broken.append(f"{md.relative_to(ROOT)}: {target} (outside the repository)")
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_link_parser() -> None:
    text = ("[a](docs/x.md) ![b](results/p.png) [c](https://e.org) [d](#anchor) [e](mailto:a@b.c)\n"
            "`[f](inline.md)`\n```bash\n[g](fenced.md)\n```\n[h](docs/y.md#part \"title\")\n")
    assert relative_links(text) == ["docs/x.md", "results/p.png", "docs/y.md#part"]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(python_blocks(README.read_text(encoding="utf-8")))))
def test_readme_python_blocks_run(index: int, tmp_path: Path) -> None:
    """Each ```python block of README.md, run as written in a fresh interpreter in an empty folder."""
    code = python_blocks(README.read_text(encoding="utf-8"))[index]
    script = tmp_path / f"readme_block_{index}.py"
    script.write_text(code, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (f"README python block {index} exited with {proc.returncode}\n"
                                  f"--- code ---\n{code}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
