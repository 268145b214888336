"""Named tap points: where a forward pass hands its activations to a hook (activation fault injection).

Every model's forward function takes ``activation_faults=None``. When it is a callable, the model calls
``h = activation_faults(name, h)`` right after each activation (each ReLU, clipped or not) and computes on
with what it returns; ``name`` is the *tap name*, built like the parameter names of the layer it follows::

    resnet20:   relu, layer1.0.relu1, layer1.0.relu2, ..., layer3.2.relu2
    small_cnn:  relu1, relu2, relu3
    mlp:        relu1, ..., relu{L-1}          (no tap after the last linear layer: its output is the logits)

``relu`` is the stem's ReLU (after ``bn1``); in a basic block ``relu1`` follows ``bn1`` and ``relu2``
follows the residual sum (torchvision's block applies its one ``relu`` module at both places).
:func:`resnet_taps`, :func:`small_cnn_taps` and :func:`mlp_taps` list them, in the order of the forward
pass; :func:`saf_ref.faults_act.activation_taps` gives them by model name.

``activation_faults=None`` (the default) costs one ``is None`` test per tap and nothing else: the forward
pass computes exactly what it computed before (bit for bit, tested for every model).

Backward
--------
The cache of the layer after a tap holds the activations the hook returned, so the weight gradients are
those of the faulty forward pass; the gradient flows through the hook as through the identity
(straight-through), the convention of training with injected noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from saf_ref import validation

__all__ = ["apply_tap", "check_tap_hook", "mlp_taps", "resnet_taps", "small_cnn_taps"]

#: The hook type: ``hook(tap_name, activations) -> activations`` (same shape and dtype).
TapHook = Callable[[str, np.ndarray], np.ndarray]


def check_tap_hook(hook: Any, fn: str) -> TapHook | None:
    """``hook`` if it is None or callable; ``TypeError`` otherwise (checked at the model's entry point)."""
    if hook is not None and not callable(hook):
        raise TypeError(
            f"{fn}: activation_faults must be None or a callable hook(tap_name, activations) -> activations "
            f"(e.g. saf_ref.faults_act.ActivationFaults), got {validation.describe(hook)}"
        )
    return hook


def apply_tap(hook: TapHook, name: str, h: np.ndarray) -> np.ndarray:
    """``hook(name, h)``, checked: the hook must return an ndarray of ``h``'s shape and dtype.

    Models call it only when a hook is given (``if activation_faults is not None``), so the fault-free
    path never reaches it.
    """
    out = hook(name, h)
    if not isinstance(out, np.ndarray) or out.shape != h.shape or out.dtype != h.dtype:
        got = validation.describe(out)
        raise TypeError(
            f"activation_faults: the hook must return an ndarray of the activations' shape {h.shape} and "
            f"dtype {h.dtype} at tap {name!r}, got {got}"
        )
    return out


def resnet_taps(blocks: Any) -> tuple[str, ...]:
    """Tap names of a ResNet whose basic blocks have the prefixes ``blocks`` (``"layer1.0."``, ...)."""
    names = ["relu"]
    for prefix in blocks:
        names += [f"{prefix}relu1", f"{prefix}relu2"]
    return tuple(names)


def small_cnn_taps(n_layers: int) -> tuple[str, ...]:
    """Tap names of the small CNN with ``n_layers`` conv layers: ``relu1 .. relu{n_layers}``."""
    return tuple(f"relu{i}" for i in range(1, n_layers + 1))


def mlp_taps(n_linear: int) -> tuple[str, ...]:
    """Tap names of an MLP with ``n_linear`` linear layers: ``relu1 .. relu{n_linear - 1}``."""
    return tuple(f"relu{i}" for i in range(1, n_linear))
