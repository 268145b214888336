"""Loading PyTorch state dicts into saf_ref's ``(params, state)`` pair, and exporting back.

A PyTorch ``state_dict`` is one flat mapping; saf_ref splits it into parameters (what the optimizer
updates) and batch-norm running statistics. The names are the same (torchvision's), so loading is one
call::

    # in PyTorch:  np.savez("net.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
    params, state = load_torch_state_dict("net.npz", arch="resnet20")
    # or directly from the tensors (torch is never imported here: anything with
    # .detach().cpu().numpy() is accepted):
    params, state = load_torch_state_dict(model.state_dict(), arch="resnet20")

and back::

    model.load_state_dict({k: torch.from_numpy(v) for k, v in export_state_dict(params, state).items()})

Every mismatch (a missing, unexpected or mis-shaped tensor) is reported by name, all at once.

Group-norm models (``norm="group"``, :mod:`saf_ref.nn.norms`) have the same parameter names and no
running statistics: ``load_torch_state_dict(sd, arch="resnet20", norm="group")``. Reparameterized
normalisation (scale ``1 + weight``) changes values, not names: its state dicts load like the plain ones
(into the reference code's ``ReparameterizedBatchNorm2d`` / ``ReparameterizedGroupNorm`` on the torch
side, whose parameters are named ``weight`` and ``bias`` too).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from saf_ref.nn.norms import check_norm
from saf_ref.nn.resnet import ARCHS, resnet_shapes
from saf_ref.nn.small import mlp_shapes, small_cnn_shapes
from saf_ref.validation import FLOAT_DTYPES, check_choice, check_float_dtype

__all__ = ["STATE_SUFFIXES", "export_state_dict", "load_torch_state_dict", "split_state_dict"]

#: Keys with these suffixes are running statistics (``state``); all others are parameters.
STATE_SUFFIXES = (".running_mean", ".running_var")
#: PyTorch's per-BN int64 counter; saf_ref does not keep it (see saf_ref.nn.resnet, "num_batches_tracked").
_DROPPED_SUFFIX = ".num_batches_tracked"

_ARCH_CHOICES = (*ARCHS, "small_cnn", "mlp")


def _to_numpy(value: Any, key: str, fn: str) -> np.ndarray:
    """A copy of ``value`` as an ndarray: ndarrays, or tensors duck-typed by ``.detach().cpu().numpy()``."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if callable(getattr(value, "detach", None)):
        try:
            # np.array copies: the result never shares memory with the tensor.
            return np.array(value.detach().cpu().numpy())
        except (TypeError, RuntimeError, AttributeError) as err:
            # e.g. bfloat16 tensors, which NumPy cannot represent.
            raise TypeError(
                f"{fn}: state_dict[{key!r}] could not be converted with .detach().cpu().numpy() ({err}); "
                "convert it to float32 or float64 first"
            ) from None
    raise TypeError(
        f"{fn}: state_dict[{key!r}] must be a numpy.ndarray or a tensor with .detach().cpu().numpy(), "
        f"got {type(value).__name__}"
    )


#: What reading a file that is no (intact) .npz raises in np.load or on reading a member; OSErrors (a
#: missing file, a directory, no permission) pass unchanged.
_FORMAT_ERRORS = (zipfile.BadZipFile, zlib.error, ValueError, EOFError, KeyError)


def _read_npz(path: str | os.PathLike, fn: str) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` file at ``path``, read with ``allow_pickle=False`` (an object array is
    refused instead of unpickled). A file that is no ``.npz`` (a single ``.npy`` array, not a zip
    archive, a truncated or corrupt member, an object array) is a ``ValueError`` naming the file."""
    where = f"{fn}: state_dict {os.fspath(path)!r}"
    try:
        loaded = np.load(path, allow_pickle=False)
    except _FORMAT_ERRORS as e:
        raise ValueError(f"{where} must be a readable .npz file, got {type(e).__name__}: {e}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # np.load of an .npy file gives the array itself
        raise ValueError(f"{where} must be an .npz file of named arrays, got a single .npy array")
    with loaded as npz:
        try:
            return {k: npz[k] for k in npz.files}
        except _FORMAT_ERRORS as e:
            raise ValueError(f"{where} must be a readable .npz file, got {type(e).__name__}: {e}") from None


def _read_source(sd: Any, fn: str) -> dict[str, np.ndarray]:
    """The (key, ndarray) pairs of a mapping, an open ``NpzFile`` or the path of an ``.npz`` file."""
    if isinstance(sd, (str, os.PathLike)):
        return _read_npz(sd, fn)
    if isinstance(sd, np.lib.npyio.NpzFile):
        try:
            return {k: sd[k] for k in sd.files}
        except _FORMAT_ERRORS as e:
            raise ValueError(
                f"{fn}: state_dict (an NpzFile) must hold readable arrays, got {type(e).__name__}: {e}"
            ) from None
    if not isinstance(sd, Mapping):
        raise TypeError(
            f"{fn}: state_dict must be a mapping of arrays/tensors, an NpzFile or the path of an .npz "
            f"file, got {type(sd).__name__}"
        )
    out = {}
    for k, v in sd.items():
        if not isinstance(k, str):
            raise TypeError(f"{fn}: state_dict keys must be str, got {type(k).__name__} {k!r}")
        out[k] = _to_numpy(v, k, fn)
    return out


def split_state_dict(
    arrays: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Split a flat name -> array mapping into ``(params, state)`` by name; drop ``num_batches_tracked``.

    No validation and no copies: the arrays are placed in the two new dicts as they are.
    """
    params = {k: v for k, v in arrays.items() if not k.endswith((*STATE_SUFFIXES, _DROPPED_SUFFIX))}
    state = {k: v for k, v in arrays.items() if k.endswith(STATE_SUFFIXES)}
    return params, state


def _expected_shapes(
    arch: str, params: dict[str, np.ndarray], fn: str, norm: str = "batch"
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """The architecture's names and shapes, its free sizes (classes, channels, width) read from ``params``."""
    if arch == "mlp":
        n_layers = sum(1 for k in params if k.startswith("fc") and k.endswith(".weight"))
        sizes = [params[f"fc{i}.weight"].shape for i in range(1, n_layers + 1) if f"fc{i}.weight" in params]
        if len(sizes) != n_layers or any(len(s) != 2 for s in sizes) or n_layers == 0:
            raise ValueError(
                f"{fn}: an mlp state dict must have 2-D weights fc1.weight ... fcL.weight, "
                f"got keys {list(params)}"
            )
        return mlp_shapes(sizes[0][1], hidden=tuple(s[0] for s in sizes[:-1]), num_classes=sizes[-1][0]), {}
    for key, ndim in (("conv1.weight", 4), ("fc.weight", 2)):
        if key not in params or params[key].ndim != ndim:
            got = params[key].shape if key in params else "no such key"
            raise ValueError(
                f"{fn}: state_dict[{key!r}] must be a {ndim}-D tensor for arch {arch!r}, got {got}"
            )
    width, in_channels = params["conv1.weight"].shape[:2]
    num_classes = params["fc.weight"].shape[0]
    if arch == "small_cnn":
        return small_cnn_shapes(in_channels=in_channels, num_classes=num_classes, width=width, norm=norm)
    return resnet_shapes(arch, num_classes=num_classes, in_channels=in_channels, width=width, norm=norm)


def _mismatches(
    what: str, arrays: dict[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]
) -> list[str]:
    missing = [k for k in shapes if k not in arrays]
    unexpected = [k for k in arrays if k not in shapes]
    wrong = [
        f"{k}: expected shape {tuple(shapes[k])}, got {arrays[k].shape}"
        for k in shapes
        if k in arrays and arrays[k].shape != tuple(shapes[k])
    ]
    out = []
    if missing:
        out.append(f"missing {what} {missing}")
    if unexpected:
        out.append(f"unexpected {what} {unexpected}")
    if wrong:
        out.append(f"{what} with a wrong shape [{'; '.join(wrong)}]")
    return out


def load_torch_state_dict(
    state_dict: Any,
    *,
    arch: str | None = None,
    reference: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None,
    dtype: Any = None,
    norm: str = "batch",
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Load a PyTorch ``state_dict`` into ``(params, state)``; PyTorch: ``model.load_state_dict(sd)``.

    Parameters
    ----------
    state_dict : mapping, NpzFile, str or os.PathLike
        A mapping of names to ndarrays or tensors (anything with ``.detach().cpu().numpy()``; torch is not
        imported), an open ``np.load`` result, or the path of an ``.npz`` (read with
        ``allow_pickle=False``).
    arch : {"resnet20", "resnet18_cifar", "resnet18", "small_cnn", "mlp"} or None
        Validate the names and shapes against this architecture; its free sizes (classes, input
        channels, width, hidden sizes) are read from ``conv1.weight`` / ``fc.weight`` / ``fc*.weight``.
    reference : (params, state) or None
        Validate against these dicts instead: the same names and shapes; ``dtype`` defaults to theirs.
    dtype : float32, float64 or None
        Cast every tensor to this dtype (one rounding). ``None`` keeps the file's dtype, which must then
        be float32 or float64 and the same for all tensors.
    norm : {"batch", "group"}
        With ``arch`` (not the MLP): the model's normalisation layers; group norm has no running
        statistics, so a ``running_mean`` in the state dict is then reported as unexpected. Reparameterized
        or not is the same (the names are).

    Returns
    -------
    params, state : dict[str, ndarray]
        New arrays (never views of the input), in the state dict's order. ``*.num_batches_tracked``
        counters are dropped (saf_ref does not keep them; see :mod:`saf_ref.nn.resnet`).

    Raises
    ------
    ValueError
        Naming every missing, unexpected or mis-shaped tensor.
    TypeError
        For a non-float or mixed-dtype state dict (without ``dtype``), or an unconvertible value.
    """
    fn = "load_torch_state_dict"
    if arch is not None and reference is not None:
        raise ValueError(f"{fn}: give arch or reference, not both, got arch={arch!r} and a reference")
    if arch is not None:
        check_choice(arch, "arch", fn, _ARCH_CHOICES)
    check_norm(norm, False, fn)
    if norm != "batch" and arch in (None, "mlp"):
        raise ValueError(
            f"{fn}: norm={norm!r} needs arch, a model with normalisation layers, got arch={arch!r}"
        )
    if reference is not None:
        pair = isinstance(reference, tuple) and len(reference) == 2
        if not (pair and all(isinstance(r, dict) for r in reference)):
            raise TypeError(
                f"{fn}: reference must be a (params, state) tuple of dicts, got {type(reference).__name__}"
            )
        if dtype is None and reference[0]:
            dtype = next(iter(reference[0].values())).dtype
    target = None if dtype is None else check_float_dtype(dtype, fn)

    params, state = split_state_dict(_read_source(state_dict, fn))
    if reference is not None:
        want_params = {k: v.shape for k, v in reference[0].items()}
        want_state = {k: v.shape for k, v in reference[1].items()}
    elif arch is not None:
        want_params, want_state = _expected_shapes(arch, params, fn, norm)
    else:
        want_params = want_state = None
    if want_params is not None:
        problems = _mismatches("parameters", params, want_params) + _mismatches("buffers", state, want_state)
        if problems:
            raise ValueError(f"{fn}: the state dict does not match the model: " + "; ".join(problems))
        # The model's order, which is also PyTorch's.
        params = {k: params[k] for k in want_params}
        state = {k: state[k] for k in want_state}

    merged = {**params, **state}
    if target is None:
        dtypes = {v.dtype for v in merged.values()}
        bad = [f"{k} ({v.dtype})" for k, v in merged.items() if v.dtype not in FLOAT_DTYPES]
        if bad:
            raise TypeError(f"{fn}: tensors must be float32 or float64 (or pass dtype=), got {bad}")
        if len(dtypes) > 1:
            raise TypeError(
                f"{fn}: all tensors must share one dtype (or pass dtype=), "
                f"got {sorted(str(d) for d in dtypes)}"
            )
        return params, state
    return (
        {k: v.astype(target, copy=False) for k, v in params.items()},
        {k: v.astype(target, copy=False) for k, v in state.items()},
    )


def export_state_dict(params: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Merge ``(params, state)`` into one PyTorch-style state dict of copies, in PyTorch's order.

    Each batch norm's ``running_mean`` / ``running_var`` follow its ``bias``, as in
    ``nn.Module.state_dict()``. ``num_batches_tracked`` is not written: PyTorch's ``load_state_dict``
    recreates it (as 0) for a state dict without version metadata, which a plain dict has.
    Save with ``np.savez(path, **export_state_dict(params, state))``.
    """
    fn = "export_state_dict"
    for what, d in (("params", params), ("state", state)):
        if not isinstance(d, dict):
            raise TypeError(f"{fn}: {what} must be a dict of numpy arrays, got {type(d).__name__}")
        for k, v in d.items():
            if not isinstance(v, np.ndarray):
                raise TypeError(f"{fn}: {what}[{k!r}] must be a numpy.ndarray, got {type(v).__name__}")
    clash = [k for k in params if k in state]
    if clash:
        raise ValueError(f"{fn}: params and state must not share keys, got {clash} in both")
    out: dict[str, np.ndarray] = {}
    for k, v in params.items():
        out[k] = v.copy()
        prefix = k[: -len(".bias")] if k.endswith(".bias") else None
        if prefix is not None:
            for suffix in STATE_SUFFIXES:
                if prefix + suffix in state:
                    out[prefix + suffix] = state[prefix + suffix].copy()
    for k, v in state.items():
        if k not in out:
            out[k] = v.copy()
    return out
