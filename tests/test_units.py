"""Sizes: human units at the edges, bytes inside."""

from __future__ import annotations

import pytest

from autotune.units import format_size, parse_size

GiB = 1024**3


@pytest.mark.parametrize(("text", "expected"), [
    ("6GB", 6_000_000_000),
    ("6GiB", 6 * GiB),
    ("6000MB", 6_000_000_000),
    ("6.5G", 6_500_000_000),
    ("512MiB", 512 * 1024**2),
    ("1TB", 10**12),
    ("6 gib", 6 * GiB),
    (" 6gb ", 6_000_000_000),
    ("1048576B", 1048576),
    (1048576, 1048576),
    ("100B", 100),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("80%", 8 * GiB * 8 // 10),
    ("100%", 8 * GiB),
    ("12.5%", GiB),
])
def test_parse_a_share_of_the_total(text, expected):
    assert parse_size(text, total_bytes=8 * GiB) == expected


@pytest.mark.parametrize(("text", "total", "message"), [
    ("lots", None, "size 'lots' is not understood; write it like 6GB, 6GiB, 6000MB, 6.5G or 80%"),
    ("6XB", None, "size '6XB' is not understood"),
    ("GB", None, "size 'GB' is not understood"),
    ("", None, "size '' is not understood"),
    ("-1GB", None, "size '-1GB' is not understood"),
    ("6 G B", None, "size '6 G B' is not understood"),
    ("0GB", None, "size '0GB' must be more than zero"),
    ("80%", None, "size '80%' is a share of the device's memory, but that memory is unknown"),
    ("0.8", None, "size '0.8' has no unit; add one (6GB, 6GiB, 6000MB) or write a share as 80%"),
    ("6", None, "size '6' has no unit; add one (6GB, 6GiB, 6000MB) or write a share as 80%"),
    ("0.5", 8 * GiB, "size '0.5' has no unit"),
    ("150%", 8 * GiB, "size '150%' must be a share between 0% and 100%"),
    ("0%", 8 * GiB, "size '0%' must be a share between 0% and 100%"),
    ("lots%", 8 * GiB, "size 'lots%' is not understood"),
    ("lots%", None, "size 'lots%' is not understood"),
])
def test_a_bad_size_says_how_to_write_one(text, total, message):
    with pytest.raises(ValueError) as raised:
        parse_size(text, total_bytes=total)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(("num_bytes", "expected"), [
    (None, "-"),
    (512, "512 B"),
    (1536, "1.5 KiB"),
    (6 * GiB, "6.0 GiB"),
    (80 * GiB, "80.0 GiB"),
    (2 * 1024**4, "2.0 TiB"),
])
def test_format_size(num_bytes, expected):
    assert format_size(num_bytes) == expected


def test_a_formatted_size_parses_back():
    assert parse_size(format_size(6 * GiB)) == 6 * GiB
