"""Argument checks shared by the attack's entry points (templated errors of :mod:`saf_ref.validation`).

Each check takes ``fn``, the public function named in its messages; the entry points call them once,
before any forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from saf_ref import validation
from saf_ref.bits.mx import MXFormat
from saf_ref.nn.registry import ModelFns, model_fns
from saf_ref.protect.spec import StorageRule, check_spec
from saf_ref.protect.stored import check_encodable, check_params

__all__ = ["Checked", "capacity", "check_batch", "check_bits", "check_classes", "check_model_inputs",
           "check_per_tensor"]


class Checked(NamedTuple):
    """What :func:`check_model_inputs` returns: the model's functions, the latents' dtype and shapes,
    the rule of every parameter and the names of the exposed ones (stored order)."""

    fns: ModelFns
    dtype: np.dtype
    shapes: dict[str, tuple[int, ...]]
    rules: dict[str, StorageRule]
    exposed: list[str]


def check_model_inputs(model: Any, latents: Any, state: Any, spec: Any, x: Any, y: Any, fn: str) -> Checked:
    """The model, latents, state, spec and batch of an attack; the spec must expose some parameter."""
    fns = model_fns(model, fn)
    dtype = check_params(latents, "latents", fn)
    if dtype is None:
        raise ValueError(f"{fn}: latents must hold at least one parameter, got an empty dict")
    if not isinstance(state, Mapping):
        raise TypeError(f"{fn}: state must be a dict of str -> ndarray, got {validation.describe(state)}")
    check_spec(spec, fn)
    check_batch(x, y, dtype, fn)
    shapes = {name: u.shape for name, u in latents.items()}
    rules = spec.resolve(shapes, fn)
    check_encodable(latents, rules, fn, "latents")
    exposed = [name for name in shapes if rules[name].exposed]
    for name in exposed:  # the first-order estimate maps word i to weight i: no shared-scale layouts
        if isinstance(rules[name].format, MXFormat):
            raise ValueError(
                f"{fn}: spec formats of exposed parameters must be per-word formats (IEEE, qM.N, a "
                f"quantizer), got the MX block format {rules[name].format_name!r} for {name!r}"
            )
    if not exposed:
        raise ValueError(f"{fn}: spec must expose at least one parameter to bit flips, got none exposed "
                         f"among {tuple(shapes)}")
    return Checked(fns, dtype, shapes, rules, exposed)


def check_classes(y: np.ndarray, num_classes: int, fn: str, **classes: int | None) -> None:
    """Labels and the named classes (``target=``, ``source=``) must be below ``num_classes`` (known after
    one forward pass)."""
    for name, value in classes.items():
        if value is not None and value >= num_classes:
            raise ValueError(f"{fn}: {name} must be a class in [0, {num_classes - 1}], got {value}")
    if int(y.max()) >= num_classes:
        raise ValueError(f"{fn}: y must be class indices in [0, {num_classes - 1}], got {int(y.max())}")


def check_batch(x: Any, y: Any, dtype: np.dtype, fn: str) -> None:
    """An attack batch: ``x`` of the latents' dtype with ``N >= 1`` examples, integer labels ``y >= 0``."""
    validation.check_float(x, "x", fn)
    if x.dtype != dtype:
        raise TypeError(f"{fn}: x must have the latents' dtype {dtype}, got {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{fn}: x must have at least 2 dimensions (N, ...), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{fn}: x must hold at least one example (the attack batch), got shape {x.shape}")
    validation.check_ndarray(y, "y", fn)
    if y.dtype.kind not in "iu":
        raise TypeError(f"{fn}: y must have an integer dtype (class indices), got {y.dtype}")
    validation.check_shape(y, "y", fn, (x.shape[0],))
    if int(y.min()) < 0:
        raise ValueError(f"{fn}: y must be class indices >= 0, got {int(y.min())}")


def check_bits(bits: Any, rules: Mapping[str, StorageRule], exposed: Sequence[str], fn: str
               ) -> dict[str, list[int]]:
    """Allowed positions per exposed tensor: all (None), the most significant ("msb"), or a list."""
    nbits = {name: rules[name].format.nbits for name in exposed}
    if bits is None:
        return {name: list(range(n)) for name, n in nbits.items()}
    if isinstance(bits, str):
        validation.check_choice(bits, "bits", fn, ("msb",))
        return {name: [n - 1] for name, n in nbits.items()}
    if not isinstance(bits, (list, tuple, np.ndarray)):
        raise TypeError(f"{fn}: bits must be None, 'msb' or a sequence of bit positions, "
                        f"got {validation.describe(bits)}")
    positions = sorted({validation.check_int(b, f"bits[{i}]", fn, low=0, high=63)
                        for i, b in enumerate(bits)})
    widest = max(nbits.values())
    if not positions or positions[-1] >= widest:
        raise ValueError(f"{fn}: bits must be a non-empty list of positions below {widest}, the widest "
                         f"exposed word, got {list(bits)}")
    return {name: [b for b in positions if b < n] for name, n in nbits.items()}


def check_per_tensor(per_tensor: Any, exposed: Sequence[str], fn: str) -> dict[str, int]:
    """Per-tensor budgets: None (no cap), one int for every tensor, or a dict (missing: no cap)."""
    unlimited = np.iinfo(np.int64).max
    if per_tensor is None:
        return {name: unlimited for name in exposed}
    if not isinstance(per_tensor, Mapping):
        cap = validation.check_int(per_tensor, "per_tensor", fn, low=0)
        return {name: cap for name in exposed}
    unknown = [k for k in per_tensor if k not in exposed]
    if unknown:
        raise ValueError(f"{fn}: per_tensor keys must be exposed tensors {tuple(exposed)}, got {unknown}")
    return {name: validation.check_int(per_tensor[name], f"per_tensor[{name!r}]", fn, low=0)
            if name in per_tensor else unlimited for name in exposed}


def capacity(shapes: Mapping[str, tuple[int, ...]], bits: Mapping[str, list[int]],
              budgets: Mapping[str, int], one_per_word: bool) -> int:
    """How many flips the constraints allow in all: per tensor, min(budget, words x allowed bits)."""
    total = 0
    for name, positions in bits.items():
        words = int(np.prod(shapes[name], dtype=np.int64))
        flips = words * (1 if one_per_word and positions else len(positions))
        total += min(budgets[name], flips)
    return total
