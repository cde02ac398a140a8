"""The mini world: Stable Diffusion in miniature, trained offline on procedural scenes."""

from conceptguard.miniworld.paths import WEIGHTS_DIR, clip_dir, oracle_dir, pipeline_dir

__all__ = ["WEIGHTS_DIR", "clip_dir", "oracle_dir", "pipeline_dir"]
