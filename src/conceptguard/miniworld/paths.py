"""Where the shipped mini-world weights live, and their SHA-256 manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from conceptguard.errors import CorruptWeightsError, ModelNotFoundError

# The model id that names the mini world (its pipeline, and the domain chosen for it).
MINIWORLD = "miniworld"
WEIGHTS_DIR = Path(__file__).parent / "weights"
MANIFEST = "manifest.json"
GATES = "gates.json"
# The audit set: bench images labelled by eye, and each judge's quality measured on it.
AUDIT_DIR = Path(__file__).parent / "audit"


def pipeline_dir() -> Path:
    return WEIGHTS_DIR / "pipeline"


def clip_dir() -> Path:
    return WEIGHTS_DIR / "clip"


def oracle_dir() -> Path:
    return WEIGHTS_DIR / "oracle"


# The oracle as trained on renders (`world train --only oracle`), before it learns from the
# audit set's train part (`audit tune-oracle` starts from it and writes `oracle`).
ORACLE_RENDERS = "oracle-renders"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(folder: Path) -> str:
    """sha256 (first 16 hex digits) over a model folder's safetensors files: names the weights a
    measurement was made on."""
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        h.update(sha256(f).encode())
    return h.hexdigest()[:16]


def weight_files(root: Path = WEIGHTS_DIR) -> list[Path]:
    """Every real file under the weights folder (links are checked through their target)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
                  and p.name not in (MANIFEST, GATES))


def write_manifest(root: Path = WEIGHTS_DIR) -> dict[str, str]:
    files = {str(p.relative_to(root)): sha256(p) for p in weight_files(root)}
    (root / MANIFEST).write_text(json.dumps({"sha256": files}, indent=1) + "\n")
    return files


def verify(folder: Path, root: Path = WEIGHTS_DIR) -> None:
    """Check every file of a shipped folder against the manifest; raise on any mismatch."""
    manifest_path = root / MANIFEST
    if not manifest_path.exists():
        raise ModelNotFoundError(f"the mini world is not trained: {manifest_path} is missing "
                                 "(run `conceptguard world train`)")
    expected = json.loads(manifest_path.read_text())["sha256"]
    root = root.resolve()
    prefix = str(folder.resolve().relative_to(root))
    # Linked files (the shared text tower, the tokenizer) are checked at their target.
    targets = {str(p.resolve().relative_to(root)) for p in folder.rglob("*") if p.is_symlink()}
    checked = 0
    for rel, digest in expected.items():
        if rel.startswith(prefix + "/") or prefix == "." or rel in targets:
            path = root / rel
            if not path.exists():
                raise CorruptWeightsError(f"missing weight file {path}")
            if sha256(path) != digest:
                raise CorruptWeightsError(f"checksum mismatch for {path}: the file is corrupted "
                                          "(restore it with `git checkout` or retrain)")
            checked += 1
    if not checked:
        raise ModelNotFoundError(f"no trained weights for {folder} in {manifest_path}")


def is_shipped(path: Path) -> bool:
    """True when `path` is inside the shipped weights folder (and so has checksums to verify)."""
    try:
        path.resolve().relative_to(WEIGHTS_DIR.resolve())
        return True
    except ValueError:
        return False
