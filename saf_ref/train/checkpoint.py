"""Checkpoints: parameters, model state, optimizer state and metadata in one ``.npz`` file, never pickled.

Layout of the file (a standard, uncompressed or deflated, NumPy ``.npz`` zip archive)::

    params/<name>      one array per parameter        (e.g. "params/layer1.0.conv1.weight")
    state/<name>       one array per state entry      (e.g. "state/bn1.running_mean")
    optim/<name>       one array per optimizer entry  (e.g. "optim/step", "optim/momentum_buffer/fc.bias")
    __manifest__       uint8 array holding a UTF-8 JSON document:

    {"format": "saf_ref.checkpoint", "format_version": 1, "has_optimizer_state": true,
     "metadata": {...},
     "arrays": {"params/conv1.weight": {"dtype": "<f4", "shape": [16, 3, 3, 3], "sha256": "9f2c..."}, ...}}

The SHA-256 is that of the array's bytes in C order (``a.tobytes(order="C")``), so it checks content,
not layout. Any NumPy tool can read the arrays (``np.load(path, allow_pickle=False)``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

FORMAT = "saf_ref.checkpoint"
FORMAT_VERSION = 1
MANIFEST_KEY = "__manifest__"
SECTIONS = {"params": "params", "state": "state", "optimizer_state": "optim"}
_STORABLE_KINDS = "biufc"  # bool, signed/unsigned integer, float, complex: stored without pickle


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, corrupt, or does not match what was expected."""


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` returns.

    Attributes
    ----------
    params : dict[str, ndarray]
        Parameters, in the order they were saved.
    state : dict[str, ndarray]
        Model state (e.g. batch-norm running statistics).
    optimizer_state : dict[str, ndarray] or None
        ``None`` if the checkpoint was saved without one (``{}`` if saved as an empty dict).
    metadata : dict
        The JSON metadata (tuples come back as lists, non-str keys as str, as JSON does).
    """

    params: dict[str, np.ndarray]
    state: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray] | None
    metadata: dict[str, Any]


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes(order="C")).hexdigest()


def _check_arrays(arrays: object, section: str, fn: str) -> Mapping[str, np.ndarray]:
    """A mapping of non-empty str -> ndarray of a dtype storable without pickle."""
    if not isinstance(arrays, Mapping):
        raise TypeError(
            f"{fn}: {section} must be a dict of str -> numpy.ndarray, got {type(arrays).__name__}"
        )
    for name, a in arrays.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"{fn}: {section} keys must be non-empty str, got {name!r}")
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{fn}: {section}[{name!r}] must be a numpy.ndarray, got {type(a).__name__}")
        if a.dtype.kind not in _STORABLE_KINDS or a.dtype.names is not None:
            raise TypeError(
                f"{fn}: {section}[{name!r}] has dtype {a.dtype}; only bool, integer, float and complex "
                "arrays can be stored (object, string and structured arrays would need pickle)"
            )
    return arrays


def _metadata_json(metadata: object, fn: str) -> Any:
    """Validate metadata: a dict that round-trips through strict JSON; return it re-parsed."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"{fn}: metadata must be a dict (JSON object) or None, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(dict(metadata), allow_nan=False))
    except TypeError as e:  # a non-JSON type (set, ndarray, object, non-str key...)
        raise TypeError(f"{fn}: metadata must be JSON-serializable, got {e}") from e
    except ValueError as e:  # NaN or inf (strict JSON has neither), or a circular reference
        raise ValueError(f"{fn}: metadata must be strict JSON (no NaN or inf), got {e}") from e


def save_checkpoint(
    path: str | os.PathLike,
    *,
    params: Mapping[str, np.ndarray],
    state: Mapping[str, np.ndarray],
    optimizer_state: Mapping[str, np.ndarray] | None = None,
    metadata: Mapping[str, Any] | None = None,
    compress: bool = False,
) -> Path:
    """Write a checkpoint atomically (PyTorch: ``torch.save({...}, path)``, but with no pickle).

    Parameters
    ----------
    path : str or PathLike
        Destination, written exactly (no ``.npz`` is appended). Its directory must exist.
    params, state : dict[str, ndarray]
        Arrays of bool, integer, float or complex dtype, any shape (0-d included), any byte order.
    optimizer_state : dict[str, ndarray], optional
        E.g. the state of :func:`saf_ref.train.optim.sgd_step`.
    metadata : dict, optional
        A JSON object (str keys; no NaN or inf): epoch, config, accuracy, ...
    compress : bool, default False
        Deflate the archive members (``np.savez_compressed``).

    Returns
    -------
    Path
        The path written.

    Notes
    -----
    The archive is written to a temporary file in the same directory, flushed to disk, then moved over
    ``path`` with ``os.replace``: a crash leaves either the old file or the new one, never a torn one. A
    new file gets mode ``0o644``; an overwritten one keeps its mode. Everything is validated before
    anything is written. Bits are stored exactly (signed zeros, NaN payloads, byte order).
    """
    fn = "save_checkpoint"
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{fn}: path must be a str or path-like, got {type(path).__name__}")
    if not isinstance(compress, bool):
        raise TypeError(f"{fn}: compress must be a bool, got {type(compress).__name__}")
    sections = {"params": params, "state": state, "optimizer_state": optimizer_state}
    members: dict[str, np.ndarray] = {}
    entries: dict[str, dict[str, Any]] = {}
    for section, arrays in sections.items():
        if arrays is None and section == "optimizer_state":
            continue
        for name, a in _check_arrays(arrays, section, fn).items():
            key = f"{SECTIONS[section]}/{name}"
            members[key] = a
            entries[key] = {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": _sha256(a)}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "has_optimizer_state": optimizer_state is not None,
        "metadata": _metadata_json(metadata, fn),
        "arrays": entries,
    }
    text = json.dumps(manifest, allow_nan=False, ensure_ascii=False, indent=1)
    members[MANIFEST_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    path = Path(path)
    _write_atomically(path, members, compress)
    return path


def _write_atomically(path: Path, members: dict[str, np.ndarray], compress: bool) -> None:
    """np.savez into a temporary sibling file, fsync, os.replace over ``path``; clean up on failure."""
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **members)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0o600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable (POSIX); not possible (nor needed) on every platform.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# Errors that reading a damaged zip member can raise (CRC mismatch, truncated deflate stream, bad header).
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError, KeyError)


def _read_member(npz: Any, key: str, where: str) -> np.ndarray:
    try:
        return npz[key]
    except _READ_ERRORS as e:
        raise CheckpointError(f"{where}: could not read array {key!r}: {type(e).__name__}: {e}") from e


def _read_manifest(npz: Any, where: str) -> dict[str, Any]:
    if MANIFEST_KEY not in npz.files:
        raise CheckpointError(f"{where}: no {MANIFEST_KEY!r} member: not a saf_ref checkpoint")
    raw = _read_member(npz, MANIFEST_KEY, where)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(
            f"{where}: {MANIFEST_KEY!r} must be a 1-d uint8 array, got {raw.dtype} {raw.shape}"
        )
    try:
        manifest = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{where}: the manifest is not valid UTF-8 JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CheckpointError(f"{where}: manifest format must be {FORMAT!r}, got {got!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: format_version {version!r} is not supported (this saf_ref reads {FORMAT_VERSION})"
        )
    arrays = manifest.get("arrays")
    if not isinstance(arrays, dict) or not isinstance(manifest.get("metadata"), dict) or not isinstance(
        manifest.get("has_optimizer_state"), bool
    ):
        raise CheckpointError(f"{where}: manifest must have 'arrays', 'metadata' and 'has_optimizer_state'")
    for key, entry in arrays.items():
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("dtype"), str)
            and isinstance(entry.get("shape"), list)
            and all(isinstance(n, int) for n in entry["shape"])
            and isinstance(entry.get("sha256"), str)
        )
        if not ok:
            raise CheckpointError(f"{where}: manifest entry for {key!r} is malformed: {entry!r}")
    return manifest


def _verify(key: str, a: np.ndarray, entry: dict[str, Any], where: str) -> None:
    """The loaded array must match its manifest entry: dtype, shape, then SHA-256 of its bytes."""
    if a.dtype.str != entry["dtype"] or list(a.shape) != entry["shape"]:
        raise CheckpointError(
            f"{where}: array {key!r} has dtype {a.dtype.str} and shape {list(a.shape)} but the manifest "
            f"says dtype {entry['dtype']} and shape {entry['shape']}"
        )
    if _sha256(a) != entry["sha256"]:
        raise CheckpointError(
            f"{where}: checksum mismatch for array {key!r}: the file is corrupt or was modified "
            f"(sha256 {_sha256(a)[:16]}..., manifest {entry['sha256'][:16]}...)"
        )


def load_checkpoint(
    path: str | os.PathLike,
    *,
    expected_params: Mapping[str, np.ndarray | tuple[int, ...]] | None = None,
) -> Checkpoint:
    """Read and verify a checkpoint written by :func:`save_checkpoint` (PyTorch: ``torch.load``).

    Parameters
    ----------
    path : str or PathLike
        The ``.npz`` file.
    expected_params : dict[str, ndarray or tuple of int], optional
        A model's parameters (or their shapes): the checkpoint must have exactly these names with these
        shapes (dtypes are not compared). Every mismatching tensor is named in one error.

    Returns
    -------
    Checkpoint
        ``(params, state, optimizer_state, metadata)``, arrays exactly as saved (bits, dtype, shape).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError (a ValueError)
        Naming the file, and the tensor where there is one, if the file is not a zip archive (or is
        truncated), has no or an unparsable manifest, has an unsupported format version, lacks an array
        the manifest lists or holds one it does not, an array's dtype/shape differs from the manifest,
        an array's SHA-256 does not match, a member would need pickle, or ``expected_params`` differ.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_checkpoint: path must be a str or path-like, got {type(path).__name__}")
    shapes = None if expected_params is None else _expected_shapes(expected_params)  # before any reading
    path = Path(path)
    where = f"load_checkpoint: {path}"
    if not path.exists():
        raise FileNotFoundError(f"{where}: no such file")
    try:
        npz = np.load(path, allow_pickle=False)  # never unpickle: a pickled member raises instead
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
        raise CheckpointError(f"{where}: not a readable .npz checkpoint: {type(e).__name__}: {e}") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{where}: is a single .npy array, not an .npz checkpoint")
    with npz:
        manifest = _read_manifest(npz, where)
        entries = manifest["arrays"]
        for key in npz.files:
            if key != MANIFEST_KEY and key not in entries:
                raise CheckpointError(f"{where}: array {key!r} is not listed in the manifest")
        out: dict[str, dict[str, np.ndarray]] = {s: {} for s in SECTIONS.values()}
        for key, entry in entries.items():
            section, sep, name = key.partition("/")
            if not sep or section not in out or not name:
                raise CheckpointError(f"{where}: manifest array name {key!r} has no known section prefix")
            if key not in npz.files:
                raise CheckpointError(
                    f"{where}: array {key!r} listed in the manifest is missing from the file"
                )
            a = _read_member(npz, key, where)
            _verify(key, a, entry, where)
            out[section][name] = a
    if out["optim"] and not manifest["has_optimizer_state"]:
        raise CheckpointError(f"{where}: optimizer arrays present but has_optimizer_state is false")
    ckpt = Checkpoint(
        params=out["params"],
        state=out["state"],
        optimizer_state=out["optim"] if manifest["has_optimizer_state"] else None,
        metadata=manifest["metadata"],
    )
    if shapes is not None:
        _check_expected(ckpt.params, shapes, where)
    return ckpt


def _expected_shapes(expected: object) -> dict[str, tuple[int, ...]]:
    """``expected_params`` as ``{name: shape}``: each value an array (its shape) or a shape (ints)."""
    fn = "load_checkpoint"
    if not isinstance(expected, Mapping):
        raise TypeError(f"{fn}: expected_params must be a dict of name -> array or shape, got "
                        f"{type(expected).__name__}")
    shapes = {}
    for name, v in expected.items():
        if isinstance(v, np.ndarray):
            shapes[name] = tuple(v.shape)
        elif isinstance(v, (tuple, list)) and all(
            isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in v
        ):
            shapes[name] = tuple(int(n) for n in v)
        else:
            raise TypeError(f"{fn}: expected_params[{name!r}] must be a numpy.ndarray or a shape (a tuple of "
                            f"int), got {type(v).__name__} {v!r}")
    return shapes


def _check_expected(params: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """Names and shapes must match exactly; one error lists every mismatching tensor."""
    problems = [f"missing {k!r} (expected shape {s})" for k, s in shapes.items() if k not in params]
    problems += [f"unexpected {k!r} (shape {a.shape})" for k, a in params.items() if k not in shapes]
    problems += [
        f"{k!r} has shape {params[k].shape}, expected {s}"
        for k, s in shapes.items()
        if k in params and params[k].shape != s
    ]
    if problems:
        raise CheckpointError(
            f"{where}: params do not match expected_params ({len(problems)} tensors): " + "; ".join(problems)
        )
