"""runtime/svdedit/runtime/images.py: what a user's image files can be, and the resize/crop policy."""

import numpy as np
import pytest
from PIL import Image

from svdedit.runtime.errors import SvdeditError
from svdedit.runtime.images import MAX_PIXELS, fit, load_image, psnr, save_png, to_uint8


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "r.jpg")
    assert out.size == (20, 40)
    top = np.asarray(out)[2, 10]
    assert top[2] > 200 and top[0] < 60  # the blue half is now on top


def test_alpha_goes_over_white_and_grey_becomes_rgb(tmp_path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "a.png")
    assert np.asarray(load_image(tmp_path / "a.png"))[0, 0].tolist() == [255, 255, 255]
    Image.new("L", (8, 8), 77).save(tmp_path / "g.png")
    g = load_image(tmp_path / "g.png")
    assert g.mode == "RGB" and np.asarray(g)[0, 0].tolist() == [77, 77, 77]


def test_fit_covers_then_centre_crops():
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    img.paste((255, 255, 255), (50, 0, 150, 100))  # a white centre band, as wide as the crop
    x = fit(img, 64)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert x.min() >= -1 and x.max() <= 1
    assert x.mean() > 0.9  # the crop kept the centre


def test_unreadable_truncated_missing_and_huge_images_are_clear_errors(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    with pytest.raises(SvdeditError, match="cannot be read"):
        load_image(tmp_path / "junk.png")
    Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(SvdeditError, match="cannot be read"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(SvdeditError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    side = int(MAX_PIXELS**0.5) + 10  # a PNG header that claims a huge image: refused before decoding
    Image.new("1", (side, side)).save(tmp_path / "bomb.png")
    with pytest.raises(SvdeditError, match="megapixels"):
        load_image(tmp_path / "bomb.png")


def test_png_round_trip_and_psnr(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    u8 = to_uint8(x)[0]
    path = save_png(u8, tmp_path / "sub" / "o.png")
    assert np.array_equal(np.asarray(Image.open(path)), u8)
    assert psnr(u8, u8) == float("inf")
    assert 20 < psnr(u8, np.clip(u8.astype(int) + 10, 0, 255).astype(np.uint8)) < 30


# ---- property-based: any bytes, any small image of any mode (issue 18) ----
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.fuzzing import FUZZ  # noqa: E402


def _png_of(mode: str, w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "F":
        img = Image.fromarray(rng.normal(0, 1e6, (h, w)).astype(np.float32), mode="F")
        fmt = "TIFF"
    elif mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (h, w)).astype(np.uint16))
        fmt = "PNG"
    else:
        img = Image.fromarray(rng.integers(0, 255, (h, w, 4)).astype(np.uint8), "RGBA").convert(mode)
        fmt = "PNG"
    import io

    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


@FUZZ
@given(data=st.binary(max_size=600), mode=st.sampled_from(["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "F"]),
       w=st.integers(1, 90), h=st.integers(1, 90), seed=st.integers(0, 9), cut=st.integers(0, 400))
def test_any_bytes_or_image_decode_to_rgb_or_a_clear_error(data, mode, w, h, seed, cut):
    from svdedit.runtime.images import decode_image

    good = _png_of(mode, w, h, seed) if mode != "CMYK" else _png_of("RGB", w, h, seed)
    for blob in (data, good, good[:cut], good[:16] + data):
        try:
            img = decode_image(blob, "the fuzzed image")
        except SvdeditError as exc:
            assert "the fuzzed image" in str(exc)
        else:
            assert img.mode == "RGB" and img.size[0] * img.size[1] >= 1
            assert fit(img, 32).shape == (3, 32, 32)
