"""Procedural renderer: a Scene -> a 32x32 RGB image, deterministic for a given rng.

Drawn at 4x resolution with PIL and box-downsampled, so edges are anti-aliased like a photo
rather than hard pixel art.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from conceptguard.miniworld.scene import Scene

IMAGE_SIZE = 32
_SS = 4  # supersampling factor
_W = IMAGE_SIZE * _SS

RGB = {
    "red": (220, 30, 30), "orange": (255, 140, 0), "yellow": (250, 220, 30),
    "green": (40, 180, 60), "blue": (40, 90, 230), "purple": (140, 50, 190),
    "pink": (255, 120, 190), "white": (245, 245, 245),
}
BACKGROUND_RGB = {"gray": (128, 128, 128), "black": (18, 18, 22), "grass": (28, 78, 34),
                  "sand": (200, 172, 118)}


def _rotate(points: list[tuple[float, float]], angle_deg: float) -> list[tuple[float, float]]:
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    return [(x * c - y * s, x * s + y * c) for x, y in points]


def _outline(shape: str) -> list[tuple[float, float]]:
    """Unit outline (radius ~1, y down) of a shape as a polygon."""
    if shape == "circle":
        return [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 64, endpoint=False)]
    if shape == "square":
        return [(-0.82, -0.82), (0.82, -0.82), (0.82, 0.82), (-0.82, 0.82)]
    if shape == "triangle":
        return [(0.0, -1.0), (0.95, 0.75), (-0.95, 0.75)]
    if shape == "star":
        pts = []
        for i in range(10):
            r = 1.0 if i % 2 == 0 else 0.45
            t = -math.pi / 2 + i * math.pi / 5
            pts.append((r * math.cos(t), r * math.sin(t)))
        return pts
    if shape == "heart":
        ts = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        xs = 16 * np.sin(ts) ** 3
        ys = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts))
        return [(x / 16.5, (y + 2.5) / 16.5) for x, y in zip(xs, ys)]
    if shape == "cross":
        a = 0.34
        return [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a),
                (-1, a), (-1, -a), (-a, -a)]
    raise ValueError(f"unknown shape {shape!r}")


def _background(name: str, rng: np.random.Generator) -> np.ndarray:
    img = np.empty((_W, _W, 3), np.float32)
    img[:] = BACKGROUND_RGB[name]
    if name == "grass":  # short light blades
        img += rng.normal(0, 10, (_W, _W, 1))
        for _ in range(90):
            x, y = rng.integers(0, _W, 2)
            img[max(0, y - 6):y, x:x + 2] = (52, 120, 50)
    elif name == "sand":  # fine grain
        img += rng.normal(0, 12, (_W, _W, 1))
    return img


def _pattern(texture: str, cx: float, cy: float, angle: float) -> np.ndarray:
    """1 where the texture's dark shade goes, 0 where the base colour stays."""
    ys, xs = np.mgrid[0:_W, 0:_W].astype(np.float32)
    u, v = xs - cx, ys - cy
    a = math.radians(angle)
    ur, vr = u * math.cos(a) + v * math.sin(a), -u * math.sin(a) + v * math.cos(a)
    if texture == "solid":
        return np.zeros((_W, _W), np.float32)
    if texture == "striped":
        return ((vr // 12) % 2).astype(np.float32)
    if texture == "dotted":
        du, dv = (ur % 24) - 12, (vr % 24) - 12
        return (du * du + dv * dv < 42).astype(np.float32)
    if texture == "checkered":
        return (((ur // 16) + (vr // 16)) % 2).astype(np.float32)
    if texture == "rings":
        return ((np.sqrt(u * u + v * v) // 11) % 2).astype(np.float32)
    raise ValueError(f"unknown texture {texture!r}")


def _draw_flames(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float,
                 rng: np.random.Generator) -> None:
    n = 6
    for i in range(n):
        x = cx + r * (-0.9 + 1.8 * (i + rng.uniform(0.2, 0.8)) / n)
        base = cy - r * (0.25 + 0.3 * (1 - abs(x - cx) / r))
        h = r * rng.uniform(0.7, 1.1)
        w = r * 0.22
        tip = (x + rng.uniform(-0.25, 0.25) * r, base - h)
        draw.polygon([(x - w, base + 0.2 * r), tip, (x + w, base + 0.2 * r)], fill=(255, 70, 0))
        tip2 = (0.5 * (x + tip[0]), base - 0.55 * h)
        draw.polygon([(x - 0.5 * w, base + 0.15 * r), tip2, (x + 0.5 * w, base + 0.15 * r)],
                     fill=(255, 225, 60))


def _draw_cracks(size: int, cx: float, cy: float, r: float, rng: np.random.Generator) -> Image.Image:
    layer = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(layer)
    ox, oy = cx + rng.uniform(-0.2, 0.2) * r, cy + rng.uniform(-0.2, 0.2) * r
    for k in range(4):
        t = k * math.pi / 2 + rng.uniform(-0.5, 0.5)
        pts = [(ox, oy)]
        x, y = ox, oy
        for _ in range(4):
            step = r * 0.32
            t += rng.uniform(-0.6, 0.6)
            x, y = x + step * math.cos(t), y + step * math.sin(t)
            pts.append((x, y))
        d.line(pts, fill=255, width=6)
    return layer


def _draw_face(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    def at(px: float, py: float) -> tuple[float, float]:
        (qx, qy), = _rotate([(px, py)], angle)
        return cx + r * qx, cy + r * qy
    for ex in (-0.2, 0.2):
        x, y = at(ex, -0.1)
        e = 0.14 * r
        draw.ellipse([x - e, y - e, x + e, y + e], fill=(0, 0, 0))
    smile = [at(0.26 * math.cos(t), 0.1 + 0.18 * math.sin(t)) for t in np.linspace(0.2, math.pi - 0.2, 12)]
    draw.line(smile, fill=(0, 0, 0), width=8)


def _draw_eye(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    e = 0.48 * r
    draw.ellipse([cx - e, cy - e, cx + e, cy + e], fill=(255, 255, 255), outline=(0, 0, 0), width=6)
    p = 0.22 * r
    draw.ellipse([cx - p, cy - p, cx + p, cy + p], fill=(0, 0, 0))


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Draw a scene as a (32, 32, 3) uint8 array. The same rng state gives the same pixels."""
    canvas = _background(scene.background, rng)
    r = (0.36 if scene.size == "large" else 0.24) * _W * scene.scale
    cx, cy = _W * (0.5 + scene.dx), _W * (0.5 + scene.dy)
    if scene.flames:  # flames rise above the object: keep it a little lower
        cy += 0.12 * r

    angle = 0.0 if scene.shape == "circle" else scene.angle
    poly = [(cx + r * x, cy + r * y) for x, y in _rotate(_outline(scene.shape), angle)]
    mask_img = Image.new("L", (_W, _W), 0)
    ImageDraw.Draw(mask_img).polygon(poly, fill=255)
    mask = np.asarray(mask_img, np.float32)[..., None] / 255.0

    base = np.array(RGB[scene.color], np.float32)
    shade = base * 0.35 if scene.color != "white" else np.array((95, 95, 95), np.float32)
    pat = _pattern(scene.texture, cx, cy, angle)[..., None]
    obj = base * (1 - pat) + shade * pat
    canvas = canvas * (1 - mask) + obj * mask

    if scene.cracks:
        crack = np.asarray(_draw_cracks(_W, cx, cy, r, rng), np.float32)[..., None] / 255.0
        canvas = canvas * (1 - crack * mask) + np.array((10, 10, 10), np.float32) * crack * mask

    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    if scene.face:
        _draw_face(draw, cx, cy, r, angle)
    if scene.eye:
        _draw_eye(draw, cx, cy, r)
    if scene.flames:
        _draw_flames(draw, cx, cy, r, rng)

    small = np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), np.float32)
    small = small + rng.normal(0, 3.0, small.shape).astype(np.float32)
    return np.clip(small, 0, 255).round().astype(np.uint8)


def contact_sheet(images: list[np.ndarray], captions: list[str] | None = None, cols: int = 8,
                  scale: int = 4) -> Image.Image:
    """Tile images (upscaled `scale`x) into one PNG, optionally with captions under each."""
    from PIL import ImageFont

    n = len(images)
    rows = max(1, math.ceil(n / cols))
    cell = IMAGE_SIZE * scale
    text_h = 34 if captions else 0
    sheet = Image.new("RGB", (cols * cell, rows * (cell + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, im in enumerate(images):
        x, y = (i % cols) * cell, (i // cols) * (cell + text_h)
        sheet.paste(Image.fromarray(im).resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        if captions:
            words, lines, line = captions[i].split(), [], ""
            for w in words:
                if len(line) + len(w) + 1 > cell // 6:
                    lines.append(line)
                    line = w
                else:
                    line = f"{line} {w}".strip()
            lines.append(line)
            draw.multiline_text((x + 2, y + cell + 1), "\n".join(lines[:3]), fill=(0, 0, 0), font=font,
                                spacing=0)
    return sheet
