"""Image files in and out of the runtime.

Reading (``load_image``): EXIF orientation applied; palette, greyscale, CMYK and alpha images become
RGB (transparent pixels over white); images above 64 megapixels are refused before they are decoded
(decompression bombs). Resizing policy (``fit``): scale so that the image covers the model's size,
keeping its aspect ratio (Lanczos), then centre-crop to exactly that size; the size is a multiple of
the engine's ``multiple_of`` (64 for SD: the VAE's 8 times the UNet's 8). Arrays are float32 NCHW in
[-1, 1], as the VAE encoder wants. Writing: PNG, atomically (files.atomic_write_bytes).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from svdedit.runtime.errors import ImageTooLargeError, SvdeditError, without_reprs
from svdedit.runtime.files import atomic_write_bytes
from svdedit.runtime.limits import LIMITS, Limits

MAX_PIXELS = LIMITS.max_pixels


#: the formats svdedit decodes (others, PostScript or EPS among them, are never handed to their decoders)
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")


def load_image(path: str | Path, limits: Limits = LIMITS) -> "PIL.Image.Image":  # noqa: F821
    """An image file as an RGB PIL image (see the module docstring), or a SvdeditError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SvdeditError(f"image {path} does not exist (or is not a file).")
    if path.stat().st_size > limits.max_file_bytes:
        raise ImageTooLargeError(f"image {path} is {path.stat().st_size} bytes; the limit is {limits.max_file_bytes}.")
    return decode_image(path, f"image {path}", limits)


def decode_image(source, what: str = "the image", limits: Limits = LIMITS) -> "PIL.Image.Image":  # noqa: F821
    """A path, bytes or a binary file as an RGB PIL image. Its size is read from the header and refused above
    limits.max_pixels or limits.max_aspect before anything is decoded (decompression bombs, 1 x 200000 strips);
    16-bit and floating-point images are scaled to 8 bits by their own range; `what` names the image in errors."""
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        with Image.open(source, formats=FORMATS) as probe:
            w, h = probe.size
            if w * h > limits.max_pixels:
                raise ImageTooLargeError(f"{what} is {w}x{h} = {w * h / 1e6:.1f} megapixels; the limit is "
                                         f"{limits.max_pixels / 1e6:g}. Downscale it first.")
            if min(w, h) < 1 or max(w, h) / min(w, h) > limits.max_aspect:
                raise ImageTooLargeError(f"{what} is {w}x{h}, an aspect ratio beyond {limits.max_aspect:g}:1; crop it "
                                         f"first (it would be scaled up to cover the model's square).")
            img = ImageOps.exif_transpose(probe)
            img.load()
    except Image.DecompressionBombError as exc:  # Pillow's own bound (twice MAX_IMAGE_PIXELS), met before ours
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(declared[1]) / 1e6:.1f} megapixels" if declared else "a size over Pillow's bound"
        raise ImageTooLargeError(f"{what} declares {size}; the limit is {limits.max_pixels / 1e6:g}. Downscale it "
                                 f"first.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise SvdeditError(f"{what} cannot be read ({type(exc).__name__}: {without_reprs(str(exc))}). Is it a "
                           f"complete PNG/JPEG/WebP file?") from None
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F") or img.mode.startswith("I;16"):
        img = _to_8_bits(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("RGB")


def _to_8_bits(img):
    """A 16-bit or floating-point single-channel image, scaled to 8 bits by its real range (not clipped)."""
    from PIL import Image

    a = np.asarray(img, dtype=np.float64)
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    scaled = np.nan_to_num((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a), nan=0.0)
    return Image.fromarray(np.rint(np.clip(scaled, 0, 1) * 255).astype(np.uint8), mode="L")


def encode_png(image_hwc: np.ndarray) -> bytes:
    """A uint8 (H, W, 3) array as PNG bytes."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image_hwc).save(buffer, format="PNG")
    return buffer.getvalue()


def fit_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """What ``fit`` does to a width x height image: (resized width, resized height, crop left, crop top)."""
    if (width, height) == (size, size):
        return size, size, 0, 0
    scale = size / min(width, height)
    w, h = max(size, round(width * scale)), max(size, round(height * scale))
    return w, h, (w - size) // 2, (h - size) // 2


def size_conditioning(width: int, height: int, size: int) -> tuple[float, ...]:
    """SDXL's time ids for the image ``fit`` made of a width x height original: (original height, width, crop top,
    left, target height, width), the crop in the resized image's pixels as SDXL's training data recorded it."""
    _, _, left, top = fit_box(width, height, size)
    return (float(height), float(width), float(top), float(left), float(size), float(size))


def fit(img, size: int) -> np.ndarray:
    """Cover-resize then centre-crop to size x size; float32 (3, size, size) in [-1, 1]."""
    from PIL import Image

    w, h, left, top = fit_box(*img.size, size)
    if img.size != (size, size):
        img = img.resize((w, h), Image.LANCZOS)
        img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return arr.transpose(2, 0, 1).copy()


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float (N, 3, H, W) in about [-1, 1] -> uint8 (N, H, W, 3)."""
    x = np.clip((np.asarray(images, dtype=np.float32) + 1.0) * 127.5, 0, 255)
    return np.rint(x).astype(np.uint8).transpose(0, 2, 3, 1)


#: what an output's suffix asks for
IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def save_image(image, path: str | Path) -> Path:
    """Write a uint8 (H, W, 3) array or a PIL image in the format its suffix names (PNG, JPEG, WebP), atomically;
    the folder is created if needed."""
    import io

    from PIL import Image

    path = Path(path)
    fmt = IMAGE_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise SvdeditError(f"{path}: the suffix says the format; use one of {', '.join(IMAGE_SUFFIXES)}.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SvdeditError(f"cannot create the folder {path.parent}: {exc.strerror or exc}.") from None
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}))
    return atomic_write_bytes(path, buffer.getvalue())


def save_png(image, path: str | Path) -> Path:
    """save_image to a .png path (the project's own figures and strips)."""
    return save_image(image, Path(path).with_suffix(".png") if Path(path).suffix.lower() != ".png" else path)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
