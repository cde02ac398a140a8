"""Reading image files given by a user: one-line errors, any PIL mode read as RGB."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from conceptguard.errors import InvalidInputError

if TYPE_CHECKING:  # for type hints only
    from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_images(paths: list[Path]) -> list[Image.Image]:
    """The images at `paths`, as RGB; a missing, unreadable or non-image file is one line."""
    from PIL import Image

    images = []
    for p in paths:
        if not p.exists():
            raise InvalidInputError(f"image not found: {p}")
        if p.is_dir():
            raise InvalidInputError(f"{p} is a folder, not an image")
        try:
            with Image.open(p) as im:
                im.load()
                images.append(as_rgb(im))
        except Exception as exc:  # PIL's decoders raise OSError, ValueError, SyntaxError, EOFError, bomb errors...
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InvalidInputError(f"cannot read image {p}: {reason}") from exc
    return images


def read_image_folder(folder: Path) -> list[Image.Image]:
    """Every image file in `folder` (sorted by name); an empty or missing folder is one line."""
    if not folder.is_dir():
        raise InvalidInputError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InvalidInputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return read_images(paths)


def as_rgb(image: Image.Image) -> Image.Image:
    """RGB of any PIL mode; 16-bit greyscale (a 16-bit PNG) scaled to 8 bits first, which PIL's
    own conversion would clip to white."""
    import numpy as np
    from PIL import Image

    if image.mode.startswith("I;16"):
        image = Image.fromarray((np.asarray(image, dtype=np.uint32) // 257).astype(np.uint8), "L")
    return image.convert("RGB")
