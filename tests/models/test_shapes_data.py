"""The shapes world: deterministic rendering and an exact attribute reader (NumPy only)."""

import numpy as np
import pytest

from models.shapes_data import ATTRIBUTES, Attributes, all_attributes, dataset, parse_caption, read_attributes, render


def test_reader_is_at_least_99_percent_right_on_held_out_renders():
    images, attrs = dataset(2000, seed=424242)
    right = {k: 0 for k in ATTRIBUTES}
    for img, a in zip(images, attrs):
        r = read_attributes(img)
        for k in ATTRIBUTES:
            right[k] += r[k] == getattr(a, k)
    accuracy = {k: v / len(attrs) for k, v in right.items()}
    assert all(acc >= 0.99 for acc in accuracy.values()), accuracy


def test_every_combination_is_read_back():
    rng = np.random.default_rng(1)
    for a in all_attributes():
        r = read_attributes(render(a, rng))
        assert {k: r[k] for k in ATTRIBUTES} == a.__dict__, a


def test_dataset_is_deterministic_from_its_seed():
    a, attrs_a = dataset(16, seed=5)
    b, attrs_b = dataset(16, seed=5)
    c, _ = dataset(16, seed=6)
    np.testing.assert_array_equal(a, b)
    assert attrs_a == attrs_b and not np.array_equal(a, c)
    assert a.shape == (16, 64, 64, 3) and a.dtype == np.uint8


def test_blank_image_reads_as_nothing():
    assert read_attributes(np.full((64, 64, 3), 200, np.uint8))["shape"] is None


def test_captions_round_trip():
    for a in all_attributes():
        assert parse_caption(a.caption()) == a
    assert Attributes("circle", "red", "large", "left").caption() == "a large red circle on the left"
    with pytest.raises(ValueError, match="exactly one colour"):
        parse_caption("a large circle on the left")
