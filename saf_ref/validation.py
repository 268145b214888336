"""Input validation with one message template.

Every public function validates its inputs through these helpers, so that every error message has the
same shape::

    <function>: <argument> <what was expected>, got <what was got>

for example ``conv2d: w.shape[1] (=4) must equal x.shape[1] (=3), the input channels``.
``TypeError`` is raised for a wrong type or dtype, ``ValueError`` for a wrong shape or value. Validation
never uses ``assert`` (which ``python -O`` removes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def describe(x: Any) -> str:
    """Short description of a value for an error message: type, and dtype/shape for arrays."""
    if isinstance(x, np.ndarray):
        return f"ndarray of dtype {x.dtype} and shape {x.shape}"
    if isinstance(x, np.generic):
        return f"numpy scalar of dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}" if isinstance(x, (int, float, str, bool)) else type(x).__name__


def check_ndarray(x: Any, name: str, fn: str) -> np.ndarray:
    """Require a NumPy array (not a list, not a scalar); return it unchanged."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{fn}: {name} must be a numpy.ndarray, got {describe(x)}")
    return x


def check_dtype(x: np.ndarray, name: str, fn: str, allowed: Iterable[Any]) -> np.ndarray:
    """Require ``x.dtype`` to be one of ``allowed`` (dtypes or dtype-likes)."""
    check_ndarray(x, name, fn)
    allowed = tuple(np.dtype(a) for a in allowed)
    if x.dtype not in allowed:
        names = ", ".join(str(a) for a in allowed)
        raise TypeError(f"{fn}: {name} must have dtype in ({names}), got {x.dtype}")
    return x


def check_float(x: np.ndarray, name: str, fn: str) -> np.ndarray:
    """Require a float32 or float64 array."""
    return check_dtype(x, name, fn, FLOAT_DTYPES)


def check_same_dtype(fn: str, **arrays: np.ndarray | None) -> np.dtype:
    """Require all given (non-None) arrays to share one dtype; return it.

    Mixed float32/float64 inputs are a ``TypeError``: silently promoting would allocate float64 in a
    float32 path.
    """
    present = {k: v for k, v in arrays.items() if v is not None}
    dtypes = {k: v.dtype for k, v in present.items()}
    first_name, first = next(iter(dtypes.items()))
    for k, d in dtypes.items():
        if d != first:
            raise TypeError(
                f"{fn}: {k}.dtype (={d}) must equal {first_name}.dtype (={first}); "
                "mixed dtypes are not promoted, cast explicitly"
            )
    return first


def check_ndim(x: np.ndarray, name: str, fn: str, ndim: int, layout: str = "") -> np.ndarray:
    """Require ``x.ndim == ndim``; ``layout`` (e.g. ``"(N, C, H, W)"``) makes the message clearer."""
    if x.ndim != ndim:
        extra = f" {layout}" if layout else ""
        raise ValueError(f"{fn}: {name} must be {ndim}-dimensional{extra}, got shape {x.shape}")
    return x


def check_equal(fn: str, a_name: str, a: Any, b_name: str, b: Any, meaning: str = "") -> None:
    """Require ``a == b``: ``conv2d: w.shape[1] (=4) must equal x.shape[1] (=3), the input channels``."""
    if a != b:
        tail = f", {meaning}" if meaning else ""
        raise ValueError(f"{fn}: {a_name} (={a}) must equal {b_name} (={b}){tail}")


def check_shape(x: np.ndarray, name: str, fn: str, shape: tuple[int, ...]) -> np.ndarray:
    """Require ``x.shape == shape`` exactly."""
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{fn}: {name} must have shape {tuple(shape)}, got {tuple(x.shape)}")
    return x


def check_choice(value: Any, name: str, fn: str, choices: Iterable[Any]) -> Any:
    """Require ``value`` to be one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{fn}: {name} must be one of {choices}, got {value!r}")
    return value


def check_int(value: Any, name: str, fn: str, *, low: int | None = None, high: int | None = None) -> int:
    """Require a Python or NumPy integer (not bool) within ``[low, high]``; return it as ``int``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an integer, got {describe(value)}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{fn}: {name} must be in [{lo}, {hi}], got {value}")
    return value


def check_real(value: Any, name: str, fn: str) -> float:
    """Require a real scalar (int or float, not bool, not an array); return it as ``float``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: {name} must be a real number, got {describe(value)}")
    return float(value)


def check_real_array(value: Any, name: str, fn: str) -> np.ndarray:
    """Require an array of real numbers (an ndarray, or a rectangular nested list or tuple of them; not
    bool); return it as a new float64 array."""
    try:
        a = np.asarray(value)
    except ValueError:  # a ragged nested list: NumPy's own message names neither function nor argument
        raise ValueError(
            f"{fn}: {name} must be a rectangular array of real numbers, got a ragged {type(value).__name__}"
        ) from None
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{fn}: {name} must be real numbers, got dtype {a.dtype}")
    return a.astype(np.float64)


def check_probability(p: Any, name: str, fn: str) -> float:
    """Require a real scalar in ``[0, 1]`` (NaN rejected); return it as ``float``."""
    value = check_real(p, name, fn)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{fn}: {name} must be a probability in [0, 1], got {p!r}")
    return value


def check_rate_sequence(
    rates: Any, fn: str, *, nonempty: bool = True, distinct: bool = False
) -> tuple[float, ...]:
    """Bit-error rates, in order, as a tuple of floats in ``[0, 1]``: from a sequence (list, tuple) or a
    1-D NumPy array. Refused: a str or bytes, a scalar, other iterables (a set has no order, a generator
    would be used up), an empty one when ``nonempty``, a repeated rate when ``distinct``."""
    expected = "a non-empty sequence of bit-error rates" if nonempty else "a sequence of bit-error rates"
    if isinstance(rates, np.ndarray):
        if rates.ndim != 1:
            raise ValueError(f"{fn}: rates must be {expected} (1-D), got an array of shape {rates.shape}")
        rates = rates.tolist()
    elif isinstance(rates, (str, bytes)) or not isinstance(rates, Sequence):
        raise TypeError(f"{fn}: rates must be {expected}, got {describe(rates)}")
    if nonempty and len(rates) == 0:
        raise ValueError(f"{fn}: rates must be {expected}, got {rates!r}")
    checked = tuple(check_probability(r, f"rates[{i}]", fn) for i, r in enumerate(rates))
    if distinct and len(set(checked)) != len(checked):
        raise ValueError(f"{fn}: rates must be distinct bit-error rates, got {list(checked)}")
    return checked


def check_rng(rng: Any, fn: str, name: str = "rng") -> np.random.Generator:
    """Turn ``rng`` into a ``np.random.Generator``.

    Accepts a Generator (returned as is) or a non-negative integer seed (``np.random.default_rng(seed)``).
    ``None`` is rejected: saf_ref never draws from hidden global state, so results are reproducible.
    """
    expected = "a numpy.random.Generator or a non-negative integer seed"
    if isinstance(rng, np.random.Generator):
        return rng
    if not isinstance(rng, (int, np.integer)) or isinstance(rng, (bool, np.bool_)):
        raise TypeError(f"{fn}: {name} must be {expected}, got {describe(rng)}")
    if rng < 0:  # the right type, a wrong value
        raise ValueError(f"{fn}: {name} must be {expected}, got {int(rng)}")
    return np.random.default_rng(int(rng))


def check_float_dtype(dtype: Any, fn: str, name: str = "dtype") -> np.dtype:
    """Require a dtype-like naming float32 or float64; return it as a ``numpy.dtype``."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{fn}: {name} must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{fn}: {name} must be float32 or float64, got {dt}")
    return dt


def check_bool(value: Any, name: str, fn: str) -> bool:
    """Require a bool (``numpy.bool_`` too; not an int); return it as a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}: {name} must be a bool, got {describe(value)}")
    return bool(value)


def check_optional_positive(value: Any, name: str, fn: str) -> float | None:
    """Require None or a finite real ``> 0``; return None or the value as a Python float."""
    if value is None:
        return None
    v = check_real(value, name, fn)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{fn}: {name} must be None or a finite positive number, got {value!r}")
    return v
