"""The shapes world: a procedural data set and an exact attribute reader (NumPy only, no torch).

Every image is 64x64 RGB: one shape (circle, square, triangle) in one of six colours, small or
large, on the left, in the middle or on the right, over a plain or lightly textured light
background. Its caption names all four attributes: "a large red circle on the left".

``render`` draws an image from its attributes (4x supersampled, so edges are anti-aliased, with
seeded jitter of position, size, tint and background); ``read_attributes`` reads the four
attributes back from any image by pixel analysis (no neural network), so that what a model draws
can be scored exactly. The data set is generated on the fly from a seed and never stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 64
SHAPES = ("circle", "square", "triangle")
#: name -> (RGB, hue in degrees); hues 40-70 degrees apart so the reader can separate them
COLOURS = {
    "red": ((215, 35, 35), 0.0),
    "yellow": ((225, 205, 30), 54.0),
    "green": ((40, 160, 50), 124.0),
    "cyan": ((30, 180, 200), 186.0),
    "blue": ((40, 60, 215), 234.0),
    "purple": ((150, 45, 190), 284.0),
}
SIZES = {"small": 9.0, "large": 16.0}  # half-extent in pixels
POSITIONS = {"left": 17.0, "middle": 32.0, "right": 47.0}  # centre x in pixels
POSITION_WORDS = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
ATTRIBUTES = ("shape", "colour", "size", "position")


@dataclass(frozen=True)
class Attributes:
    shape: str
    colour: str
    size: str
    position: str

    def caption(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {POSITION_WORDS[self.position]}"

    def replace(self, **changes) -> "Attributes":
        return Attributes(**{**self.__dict__, **changes})


def all_attributes() -> list[Attributes]:
    return [Attributes(s, c, z, p) for s in SHAPES for c in COLOURS for z in SIZES for p in POSITIONS]


def sample_attributes(rng: np.random.Generator) -> Attributes:
    return Attributes(
        shape=SHAPES[rng.integers(len(SHAPES))],
        colour=list(COLOURS)[rng.integers(len(COLOURS))],
        size=list(SIZES)[rng.integers(len(SIZES))],
        position=list(POSITIONS)[rng.integers(len(POSITIONS))],
    )


def parse_caption(prompt: str) -> Attributes:
    """The inverse of Attributes.caption (for prompts written in the training grammar)."""
    words = prompt.lower().replace(",", " ").split()
    found = {}
    for key, names in (("shape", SHAPES), ("colour", COLOURS), ("size", SIZES), ("position", POSITIONS)):
        hits = [n for n in names if n in words]
        if len(hits) != 1:
            raise ValueError(f"prompt {prompt!r} must name exactly one {key} out of {', '.join(names)}")
        found[key] = hits[0]
    return Attributes(**found)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
_SS = 4  # supersampling factor
_GRID = (np.mgrid[0 : SIZE * _SS, 0 : SIZE * _SS].astype(np.float32) + 0.5) / _SS  # (y, x) in pixels


def _mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    y, x = _GRID
    if shape == "circle":
        m = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    elif shape == "square":
        s = r * 0.88  # same area class as the circle of radius r
        m = (np.abs(x - cx) <= s) & (np.abs(y - cy) <= s)
    else:  # upward equilateral triangle with circumradius 1.25 r, centred on its centroid
        R = 1.25 * r
        top, base = cy - R, cy + R / 2
        half = (base - top) / np.sqrt(3.0)
        m = (y <= base) & (np.abs(x - cx) <= (y - top) / (base - top) * half)
    # box-filter down to 64x64: anti-aliased coverage in [0, 1]
    return m.reshape(SIZE, _SS, SIZE, _SS).mean(axis=(1, 3))


def render(a: Attributes, rng: np.random.Generator) -> np.ndarray:
    """One 64x64x3 uint8 image of `a`, with seeded jitter and background."""
    # background: light, low-saturation, plain or lightly textured
    grey = rng.uniform(185, 235)
    tint = rng.uniform(-8, 8, 3)
    bg = np.broadcast_to(grey + tint, (SIZE, SIZE, 3)).astype(np.float32)
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        freq = rng.uniform(0.15, 0.5)
        wave = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 6.3))
        bg = bg + (rng.uniform(3, 8) * wave)[..., None] + rng.normal(0, 2.5, (SIZE, SIZE, 1))
    # the shape: jittered centre, extent and colour
    cx = POSITIONS[a.position] + rng.uniform(-2.5, 2.5)
    cy = 32.0 + rng.uniform(-4, 4)
    r = SIZES[a.size] * rng.uniform(0.92, 1.08)
    colour = np.float32(COLOURS[a.colour][0]) + rng.uniform(-12, 12, 3)
    cover = _mask(a.shape, cx, cy, r)[..., None]
    img = bg * (1 - cover) + colour * cover
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def dataset(n: int, seed: int) -> tuple[np.ndarray, list[Attributes]]:
    """`n` images (n, 64, 64, 3) uint8 and their attributes, deterministic from `seed`."""
    rng = np.random.default_rng(seed)
    attrs = [sample_attributes(rng) for _ in range(n)]
    return np.stack([render(a, rng) for a in attrs]), attrs


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def _hue_saturation(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rgb = rgb.astype(np.float32) / 255.0
    mx, mn = rgb.max(-1), rgb.min(-1)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    d = np.maximum(delta, 1e-6)
    hue = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) * 60.0
    return hue, sat


def object_mask(img: np.ndarray) -> np.ndarray:
    """Pixels of the shape: far from the background colour (the median of the border) and saturated."""
    img = np.asarray(img, dtype=np.float32)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(img - bg, axis=-1)
    _, sat = _hue_saturation(img)
    return (dist > 60) & (sat > 0.35)


def read_attributes(img: np.ndarray) -> dict:
    """Read shape, colour, size and position from a 64x64x3 uint8 image.

    Returns a dict with the four attributes (None where no shape is found) and the pixel area.
    """
    mask = object_mask(img)
    area = int(mask.sum())
    if area < 20:
        return {"shape": None, "colour": None, "size": None, "position": None, "area": area}
    ys, xs = np.nonzero(mask)
    # colour: circular mean of the hue of the shape's pixels, nearest named hue
    hue, _ = _hue_saturation(img[mask])
    ang = np.deg2rad(hue)
    mean = np.rad2deg(np.arctan2(np.sin(ang).mean(), np.cos(ang).mean())) % 360
    colour = min(COLOURS, key=lambda c: min(abs(mean - COLOURS[c][1]), 360 - abs(mean - COLOURS[c][1])))
    # position: the centroid's x
    cx = xs.mean()
    position = "left" if cx < 24.5 else "right" if cx > 39.5 else "middle"
    # size: the bounding box's larger side (small: ~16-20 px, large: ~28-35 px)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    size = "small" if max(h, w) < 25 else "large"
    # shape: how much of the bounding box the shape fills (square ~1, circle ~pi/4, triangle ~1/2)
    fill = area / float(h * w)
    shape = "square" if fill > 0.89 else "circle" if fill > 0.64 else "triangle"
    return {"shape": shape, "colour": colour, "size": size, "position": position, "area": area}


#: the continuous reading behind each attribute (what `measure` returns), and its unit
READINGS = {"colour": ("hue", "degrees from red"), "size": ("extent", "px"), "position": ("centroid_x", "px"),
            "shape": ("fill", "of the bounding box")}


def measure(img: np.ndarray) -> dict:
    """Continuous readings of the shape behind read_attributes' four names (NaN where no shape is found):
    hue (degrees, signed, red = 0, blue = -126), extent (the bounding box's larger side, px), centroid_x
    (px), fill (the shape's share of its bounding box: square ~1, circle ~0.79, triangle ~0.5)."""
    mask = object_mask(img)
    if mask.sum() < 20:
        return {"hue": float("nan"), "extent": float("nan"), "centroid_x": float("nan"), "fill": float("nan")}
    ys, xs = np.nonzero(mask)
    hue, _ = _hue_saturation(img[mask])
    ang = np.deg2rad(hue)
    mean = float(np.rad2deg(np.arctan2(np.sin(ang).mean(), np.cos(ang).mean())))
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    return {"hue": (mean + 180.0) % 360.0 - 180.0, "extent": float(max(h, w)), "centroid_x": float(xs.mean()),
            "fill": float(mask.sum() / (h * w))}


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a boolean mask by `pixels` (4-neighbourhood steps)."""
    out = mask.copy()
    for _ in range(pixels):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def score_edit(source: np.ndarray, edited: np.ndarray, attribute: str, target: str, margin: int = 3) -> dict:
    """How an edit of `attribute` to `target` went, read off two uint8 images.

    success: the edited image shows `target`; identity: every other attribute reads as on the source;
    psnr_outside: PSNR over the pixels outside both images' shapes, grown by `margin` pixels (the VAE
    smears a shape's colour a pixel or two into its surroundings).
    """
    a, b = read_attributes(source), read_attributes(edited)
    others = [k for k in ATTRIBUTES if k != attribute]
    keep = ~dilate(object_mask(source) | object_mask(edited), margin)
    diff = source.astype(np.float64)[keep] - edited.astype(np.float64)[keep]
    mse = float((diff**2).mean()) if diff.size else 0.0
    return {"success": b[attribute] == target, "identity": all(a[k] == b[k] for k in others),
            "psnr_outside": 10 * np.log10(255.0**2 / max(mse, 1e-10)), "source_read": a, "edited_read": b}


def main(argv: list[str] | None = None) -> int:
    """python -m models.shapes_data "a small blue square in the middle" OUT.png [--seed N]"""
    import argparse

    from PIL import Image

    ap = argparse.ArgumentParser(prog="python -m models.shapes_data",
                                 description="Render one image of the shapes world from its caption.")
    ap.add_argument("caption", help='e.g. "a large red circle on the left"')
    ap.add_argument("output", help="PNG to write")
    ap.add_argument("--seed", type=int, default=0, help="jitter and background seed")
    args = ap.parse_args(argv)
    try:
        attrs = parse_caption(args.caption)
    except ValueError as exc:
        ap.error(str(exc))
    Image.fromarray(render(attrs, np.random.default_rng(args.seed))).save(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
