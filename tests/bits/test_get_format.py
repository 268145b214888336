"""get_format dispatches by name to the IEEE and fixed-point formats, with clear errors."""

import numpy as np
import pytest

from saf_ref.bits import (
    FixedPointFormat,
    IEEEFormat,
    NumberFormat,
    Quantizer,
    get_format,
    resolve_format,
    smallest_container,
)


@pytest.mark.parametrize(
    "name,canonical,nbits,container",
    [
        ("float64", "float64", 64, np.uint64),
        ("fp32", "float32", 32, np.uint32),
        ("float16", "float16", 16, np.uint16),
        ("bf16", "bfloat16", 16, np.uint16),
        ("e4m3", "float8_e4m3fn", 8, np.uint8),
        ("float8_e5m2", "float8_e5m2", 8, np.uint8),
        ("q2.5", "q2.5", 8, np.uint8),
        ("Q7.8", "q7.8", 16, np.uint16),
        ("q0.1", "q0.1", 2, np.uint8),
    ],
)
def test_names(name, canonical, nbits, container):
    fmt = get_format(name)
    assert isinstance(fmt, NumberFormat)
    assert fmt.name == canonical and fmt.nbits == nbits and fmt.container == np.dtype(container)
    # The fields tile the word exactly: every bit belongs to one field.
    covered = sorted(b for f in fmt.fields.values() for b in f.bits())
    assert covered == list(range(nbits))


def test_format_objects_pass_through():
    fmt = get_format("float16")
    assert get_format(fmt) is fmt and isinstance(fmt, IEEEFormat)
    assert isinstance(get_format("q2.5"), FixedPointFormat)


@pytest.mark.parametrize(
    "name,exc,match",
    [
        ("float7", ValueError, "get_format: name must be an IEEE format name .* got 'float7'"),
        ("", ValueError, "get_format: name must be an IEEE format name .* got ''"),
        ("q16.16", ValueError, "33 bits, expected 2..32"),
        ("q2.x", ValueError, "must have the form 'qM.N'"),
        (16, TypeError, "get_format: name must be a format name"),
        (None, TypeError, "get_format: name must be a format name"),
    ],
)
def test_bad_names(name, exc, match):
    with pytest.raises(exc, match=match):
        get_format(name)


def test_get_format_rejects_a_quantizer_which_resolve_format_accepts():
    q = Quantizer(8)
    with pytest.raises(TypeError, match="get_format: name must be .* or a FixedPointFormat, got Quantizer"):
        get_format(q)
    assert resolve_format(q) is q
    assert resolve_format("bf16") is get_format("bfloat16")
    assert resolve_format("Q2.5") == FixedPointFormat(2, 5)


@pytest.mark.parametrize(
    "fmt,exc,match",
    [
        ("float12", ValueError, r"caller: rule 'x' format must be an IEEE format name .* got 'float12'"),
        ("q16.16", ValueError, r"caller: rule 'x' format 'q16.16' has 1 \+ M \+ N = 33 bits, expected 2..32"),
        ("q2", ValueError, r"caller: rule 'x' format must be an IEEE format name .* got 'q2'"),
        ("q.5", ValueError, r"caller: rule 'x' format must have the form 'qM.N' \(e.g. 'q2.5'\), got 'q.5'"),
        (2.5, TypeError, r"caller: rule 'x' format must be a format name .* or a Quantizer, got float 2.5"),
    ],
)
def test_resolve_format_names_the_caller_and_argument(fmt, exc, match):
    with pytest.raises(exc, match=match):
        resolve_format(fmt, fn="caller", name="rule 'x' format")


@pytest.mark.parametrize(
    "nbits,container", [(1, np.uint8), (8, np.uint8), (9, np.uint16), (16, np.uint16), (17, np.uint32),
                        (32, np.uint32), (33, np.uint64), (64, np.uint64)],
)  # fmt: skip
def test_smallest_container(nbits, container):
    assert smallest_container(nbits) == np.dtype(container)


@pytest.mark.parametrize(
    "nbits,exc,match",
    [(65, ValueError, r"smallest_container: nbits must be in \[1, 64\], got 65"),
     (0, ValueError, r"nbits must be in \[1, 64\], got 0"),
     (8.0, TypeError, "smallest_container: nbits must be an integer, got float")],
)  # fmt: skip
def test_smallest_container_errors(nbits, exc, match):
    with pytest.raises(exc, match=match):
        smallest_container(nbits)
