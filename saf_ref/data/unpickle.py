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
NumPy >= 2), called with ``numpy.ndarray``, and its element type through ``numpy.dtype``. We map those
names to the objects directly, without importing the module named in the file (``numpy.core`` is
deprecated in NumPy 2).

saf_ref never *writes* pickles; this module only reads the third-party format.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

# The function NumPy's ndarray.__reduce__ names, fetched from NumPy itself so that it is the right object
# on NumPy 1.x (numpy.core.multiarray) and 2.x (numpy._core.multiarray) alike.
_reconstruct = np.ndarray.__reduce__(np.empty(0, dtype=np.uint8))[0]

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in :data:`ALLOWED_GLOBALS`.

    With only these callables reachable, a pickle can build NumPy arrays and dtypes and plain Python
    containers, and nothing else: it cannot import a module or call any other function.
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


def restricted_loads(data: bytes, *, source: str) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (``encoding="bytes"``, as CIFAR needs).

    ``encoding="bytes"`` keeps Python 2 ``str`` objects (dict keys such as ``b"data"``, the raw array
    buffer) as ``bytes`` instead of decoding them as ASCII. Any failure, including a refused global, is
    raised as :class:`pickle.UnpicklingError` whose message names ``source``.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise pickle.UnpicklingError(f"{source}: {exc}") from None
    except Exception as exc:  # truncated or garbled input raises EOFError, ValueError, TypeError, ...
        what = f"{type(exc).__name__}: {exc}"
        raise pickle.UnpicklingError(f"{source}: not a readable pickle ({what})") from exc
