"""A restricted unpickler for the official CIFAR "python version" batches, and only for reading them.

Why this exists: the CIFAR archives store each batch as a pickle (written by Python 2's cPickle).
``pickle.load`` on an untrusted file can run arbitrary code, because a pickle may name any importable
callable (``os.system``, ``builtins.eval``, ...) and ask the loader to call it. Every such name goes
through :meth:`pickle.Unpickler.find_class`; this subclass answers it from a fixed table of the four
names the CIFAR batches actually use and raises :class:`pickle.UnpicklingError` for everything else
(Python documentation, "Restricting Globals"). Dicts, lists, tuples, bytes, str, ints and floats need no
global, so they load normally.

What a CIFAR batch references (visible with ``pickletools.dis``): the data array is pickled through
``numpy.core.multiarray._reconstruct`` (``numpy._core.multiarray._reconstruct`` if re-pickled with
NumPy >= 2), called with ``numpy.ndarray``, and its element type through ``numpy.dtype``.

Why those names do not resolve to NumPy's own objects: NumPy's constructors trust their arguments, so a
pickle that may call them can still read memory it does not own. ``numpy.ndarray(shape, dtype, buffer,
offset)`` accepts a negative ``offset`` (an array over the memory *before* the pickle's bytes), and
``dtype.__setstate__`` accepts a record whose field lies beyond the record's size; either reads other
memory of the process into the loaded images, or crashes it. So the four names resolve to stand-ins
that only *record* what the pickle asks for, and the arrays are built afterwards by
:func:`numpy.frombuffer` from the recorded bytes, after checking that they are a plain number type
(bool, int8..int64, uint8..uint64, float16/32/64, any byte order) and that the bytes exactly fill the
shape. Anything else (object or record dtypes, ``numpy.ndarray`` called directly) is refused.

saf_ref never *writes* pickles; this module only reads the third-party format.
"""

from __future__ import annotations

import io
import math
import pickle
from typing import Any

import numpy as np

#: Element types an array in the pickle may have: NumPy's pickled names of the plain number types.
ALLOWED_DTYPES = ("b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8")
_BYTE_ORDERS = ("<", ">", "=", "|")
_MAX_DEPTH = 64  # containers nested deeper than this are refused (a CIFAR batch nests 2 deep)


def _text(value: Any) -> Any:
    """Python 2 ``str`` values arrive as bytes (``encoding="bytes"``): decode the ASCII ones."""
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return value
    return value


class _DtypeRecord:
    """What ``numpy.dtype(name, align, copy)`` and its ``__setstate__`` asked for: a name, a byte order."""

    def __init__(self, name: Any, align: Any = False, copy: Any = False) -> None:
        name = _text(name)
        if name not in ALLOWED_DTYPES:
            raise pickle.UnpicklingError(
                f"refusing array element type {name!r}: only the plain number types {ALLOWED_DTYPES} "
                "are allowed"
            )
        self.name = name
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        # NumPy's dtype state: (version, byteorder, subarray, names, fields, elsize, alignment, flags);
        # a plain number type has no subarray, names or fields. elsize, alignment and flags are not used:
        # the dtype is rebuilt from the name and the byte order alone.
        if not (isinstance(state, tuple) and len(state) >= 5 and _text(state[1]) in _BYTE_ORDERS
                and state[2:5] == (None, None, None)):
            raise pickle.UnpicklingError(
                f"refusing the state of dtype {self.name!r}: a plain number type has no subarray or fields"
            )
        self.byteorder = _text(state[1])

    def dtype(self) -> np.dtype:
        dt = np.dtype(self.name)
        return dt.newbyteorder(self.byteorder) if self.byteorder in "<>" else dt


class _ArrayRecord:
    """What ``_reconstruct(numpy.ndarray, ...)`` and the array's ``__setstate__`` asked for; the array is
    built by :func:`numpy.frombuffer` (read-only, sharing the pickle's bytes; a copy in native byte order
    for another byte order) once the state is checked."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # NumPy's array state: ([version,] shape, dtype, is_fortran, rawdata)
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise pickle.UnpicklingError("refusing an array state that is not (shape, dtype, order, data)")
        shape, dtype, fortran, raw = state
        ok_shape = isinstance(shape, tuple) and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
        )
        if not (ok_shape and isinstance(dtype, _DtypeRecord) and isinstance(fortran, (bool, int))
                and isinstance(raw, (bytes, bytearray))):
            raise pickle.UnpicklingError(
                "refusing an array state: it must be a shape of ints >= 0, a plain number dtype, an order "
                f"flag and the raw bytes, got {tuple(type(s).__name__ for s in state)}"
            )
        dt = dtype.dtype()
        if math.prod(shape) * dt.itemsize != len(raw):
            raise pickle.UnpicklingError(
                f"refusing an array of shape {shape} and dtype {dt}: it needs "
                f"{math.prod(shape) * dt.itemsize} bytes, got {len(raw)}"
            )
        array = np.frombuffer(raw, dtype=dt).reshape(shape, order="F" if fortran else "C")
        # NumPy's own unpickler returns a non-native byte order as native; so do we (a copy, same values)
        self.array = array if dt.isnative else array.astype(dt.newbyteorder("="))


class _StandIn:
    """What a global of the pickle resolves to: calling it calls ``make``; it cannot be modified.

    A pickle may apply its BUILD opcode to any object it holds, the resolved globals included; that sets
    attributes (or calls ``__setstate__``). NumPy's own objects are immutable; these stand-ins refuse too,
    so that one file cannot change what a later load does.
    """

    __slots__ = ("_name", "_make")

    def __init__(self, name: str, make: Any) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_make", make)

    def __call__(self, *args: Any) -> Any:
        return self._make(*args)

    def __setattr__(self, key: str, value: Any) -> None:
        raise pickle.UnpicklingError(f"refusing to modify {self._name}")

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"refusing to set the state of {self._name}")

    def __repr__(self) -> str:
        return self._name


def _call_ndarray(*args: Any) -> None:
    raise pickle.UnpicklingError("refusing to call numpy.ndarray directly (only through _reconstruct)")


def _reconstruct_array(subtype: Any = None, shape: Any = None, dtype: Any = None) -> _ArrayRecord:
    """Stand-in for NumPy's ``_reconstruct``: only for ``numpy.ndarray``; its other arguments are
    placeholders that the array's state replaces."""
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError(f"refusing _reconstruct of {subtype!r}: only numpy.ndarray is allowed")
    return _ArrayRecord()


_NDARRAY = _StandIn("numpy.ndarray", _call_ndarray)
_RECONSTRUCT = _StandIn("numpy.core.multiarray._reconstruct", _reconstruct_array)

#: The four names a CIFAR batch uses, each resolved to its stand-in (see the module docstring).
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _StandIn("numpy.dtype", _DtypeRecord),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in :data:`ALLOWED_GLOBALS` (stand-ins, see the module
    docstring).

    With only these names reachable, a pickle can describe NumPy arrays of plain numbers and plain Python
    containers, and nothing else: it cannot import a module or call any other function. Its
    :meth:`load` returns the stand-ins; :func:`restricted_loads` turns them into arrays.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: a CIFAR batch references only "
                f"{sorted('.'.join(k) for k in ALLOWED_GLOBALS)}; the file is not an official CIFAR "
                "batch and may be malicious"
            ) from None


def _resolve(obj: Any, memo: dict[int, Any], depth: int) -> Any:
    """``obj`` with every array stand-in replaced by its array (containers rebuilt, shared ones once)."""
    if isinstance(obj, _ArrayRecord):
        if obj.array is None:
            raise pickle.UnpicklingError("refusing an array without its state (shape, dtype and data)")
        return obj.array
    if isinstance(obj, _DtypeRecord):
        return obj.dtype()
    if isinstance(obj, _StandIn):
        raise pickle.UnpicklingError(f"refusing {obj!r} as a value (it only builds arrays)")
    if not isinstance(obj, (list, tuple, dict, set, frozenset)):
        return obj
    if id(obj) in memo:
        return memo[id(obj)]
    if depth > _MAX_DEPTH:
        raise pickle.UnpicklingError(f"refusing containers nested more than {_MAX_DEPTH} deep")
    if isinstance(obj, list):
        out_list: list = []
        memo[id(obj)] = out_list  # before the items: a list may contain itself
        out_list.extend(_resolve(v, memo, depth + 1) for v in obj)
        return out_list
    if isinstance(obj, dict):
        out_dict: dict = {}
        memo[id(obj)] = out_dict
        for k, v in obj.items():
            out_dict[_resolve(k, memo, depth + 1)] = _resolve(v, memo, depth + 1)
        return out_dict
    items = [_resolve(v, memo, depth + 1) for v in obj]
    out = tuple(items) if isinstance(obj, tuple) else type(obj)(items)  # a set of arrays fails to hash
    memo[id(obj)] = out
    return out


def restricted_loads(data: bytes, *, source: str) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (``encoding="bytes"``, as CIFAR needs).

    ``encoding="bytes"`` keeps Python 2 ``str`` objects (dict keys such as ``b"data"``, the raw array
    buffer) as ``bytes`` instead of decoding them as ASCII. Arrays come back read-only when the pickle
    held their bytes as ``bytes`` (they share them). Any failure, including a refused global, element
    type or array state, is raised as :class:`pickle.UnpicklingError` whose message names ``source``.
    """
    try:
        return _resolve(RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load(), {}, 0)
    except pickle.UnpicklingError as exc:
        raise pickle.UnpicklingError(f"{source}: {exc}") from None
    except Exception as exc:  # truncated or garbled input raises EOFError, ValueError, TypeError, ...
        what = f"{type(exc).__name__}: {exc}"
        raise pickle.UnpicklingError(f"{source}: not a readable pickle ({what})") from exc
