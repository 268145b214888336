"""The model registry: models by name, so that a model pickles into worker processes.

A model is named by a string: ``"resnet20"``, ``"resnet18_cifar"``, ``"resnet18"``, ``"small_cnn"`` or
``"mlp"``, optionally followed by ``@`` and options ``key=value`` separated by commas:

- ``act_clip=<c>``, a ReLU ceiling ``c > 0`` (activation clipping; see :mod:`saf_ref.nn.resnet`);
- ``norm=batch`` (default) or ``norm=group``, the normalisation layers, and ``reparam=1`` (default
  ``0``), the reference code's reparameterized scale ``1 + weight`` (see :mod:`saf_ref.nn.norms`; not for
  the MLP, which has no normalisation layers)::

    model_fns("small_cnn@act_clip=6")      # every ReLU is min(max(z, 0), 6), i.e. ReLU6
    model_fns("resnet20@act_clip=0.5")
    model_fns("resnet20@norm=group,reparam=1")   # Stutz et al.'s normalisation

See :func:`parse_model_name` for the exact grammar and :func:`format_model_name` to build one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from saf_ref.nn.blocks import ModelGrads, check_act_clip
from saf_ref.nn.norms import NORMS, check_norm
from saf_ref.nn.resnet import ARCHS, init_resnet, resnet_backward, resnet_forward
from saf_ref.nn.small import (
    init_small_cnn,
    mlp_backward,
    mlp_forward,
    small_cnn_backward,
    small_cnn_forward,
)

__all__ = [
    "MODEL_NAMES",
    "MODEL_OPTIONS",
    "ModelFns",
    "ModelName",
    "format_model_name",
    "init_model",
    "model_fns",
    "parse_model_name",
]


class ModelFns(NamedTuple):
    """A model as two functions, the interface every saf_ref model has.

    ``forward(params, state, x, *, train) -> (logits, new_state, cache)`` computes with the weights it is
    given; ``backward(dlogits, cache) -> ModelGrads(params, x)``. ``infer``, where a model has one, is
    ``forward`` for evaluation with nothing kept for a backward pass (``cache`` is None), like PyTorch's
    ``torch.no_grad()``: the same logits bit for bit (a ResNet's ``keep_cache=False``; with plain batch
    norm it keeps its activations in the convolutions' layout from layer to layer and is 1.4-1.5x faster,
    with group norm or ``reparam`` it runs the unfused layers). Use :meth:`inference`.
    """

    name: str
    forward: Callable[..., tuple[np.ndarray, dict[str, np.ndarray], Any]]
    backward: Callable[..., ModelGrads]
    infer: Callable[..., tuple[np.ndarray, dict[str, np.ndarray], None]] | None = None

    def inference(self) -> Callable[..., tuple[np.ndarray, dict[str, np.ndarray], Any]]:
        """The forward function to evaluate with (``train=False``): ``infer`` if the model has one,
        else ``forward``."""
        return self.forward if self.infer is None else self.infer


MODEL_NAMES: tuple[str, ...] = (*ARCHS, "small_cnn", "mlp")
#: Options a model name may carry after ``@`` (``"small_cnn@act_clip=6"``), in canonical order.
MODEL_OPTIONS: tuple[str, ...] = ("act_clip", "norm", "reparam")
_REPARAM_VALUES = {"0": False, "1": True, "false": False, "true": True}


class ModelName(NamedTuple):
    """A parsed model name: the architecture and its options (``act_clip=None``: plain ReLU;
    ``norm="batch"``, ``reparam=False``: plain batch norm)."""

    base: str
    act_clip: float | None = None
    norm: str = "batch"
    reparam: bool = False

    @property
    def canonical(self) -> str:
        """The name in canonical form (see :func:`format_model_name`)."""
        return format_model_name(self.base, act_clip=self.act_clip, norm=self.norm, reparam=self.reparam)


def format_model_name(
    base: str, *, act_clip: float | None = None, norm: str = "batch", reparam: bool = False
) -> str:
    """The canonical model name: ``base``, then the options that differ from their defaults, in the
    order ``act_clip``, ``norm``, ``reparam``: ``"resnet20@act_clip=6.0,norm=group,reparam=1"``.

    ``format_model_name("small_cnn", act_clip=6)`` is ``"small_cnn@act_clip=6.0"``; the ceiling is
    written with ``repr(float)``, which round-trips exactly, so ``parse_model_name`` gives it back.
    ``norm`` and ``reparam`` need normalisation layers (not ``"mlp"``).
    """
    fn = "format_model_name"
    if not isinstance(base, str):
        raise TypeError(f"{fn}: base must be a str, got {type(base).__name__}")
    if base not in MODEL_NAMES:
        raise ValueError(f"{fn}: base must be one of {MODEL_NAMES}, got {base!r}")
    c = check_act_clip(act_clip, fn)
    norm, reparam = check_norm(norm, reparam, fn)
    if base == "mlp" and (norm != "batch" or reparam):
        raise ValueError(
            f"{fn}: norm and reparam need a model with normalisation layers, got base 'mlp' with "
            f"norm={norm!r}, reparam={reparam!r}"
        )
    options = [] if c is None else [f"act_clip={c!r}"]
    options += [f"norm={norm}"] if norm != "batch" else []
    options += ["reparam=1"] if reparam else []
    return base if not options else f"{base}@{','.join(options)}"


def _name_error(fn: str, name: str, problem: str) -> ValueError:
    return ValueError(
        f"{fn}: model {problem}; expected '<base>' or '<base>@act_clip=<c>' with <base> in {MODEL_NAMES} "
        f"and <c> a finite number > 0 (e.g. 'small_cnn@act_clip=6'; other options: norm=batch|group, "
        f"reparam=0|1), got {name!r}"
    )


def parse_model_name(name: str, fn: str = "parse_model_name") -> ModelName:
    """Split a model name into its architecture and options.

    Grammar (no whitespace anywhere)::

        name    := base [ "@" option { "," option } ]
        base    := "resnet20" | "resnet18_cifar" | "resnet18" | "small_cnn" | "mlp"
        option  := "act_clip=" number        (a Python float literal: 6, 6.0, 0.5, 2e-1)
                 | "norm=" ("batch" | "group")
                 | "reparam=" ("0" | "1" | "false" | "true")

    Each option may appear at most once, in any order. ``act_clip`` must be finite and ``> 0``;
    ``norm`` and ``reparam`` are refused for the MLP (it has no normalisation layers).

    Parameters
    ----------
    name : str
    fn : str
        The function name errors are reported under.

    Returns
    -------
    ModelName
        ``ModelName("small_cnn", 6.0)`` for ``"small_cnn@act_clip=6"``,
        ``ModelName("resnet20", None, "group", True)`` for ``"resnet20@norm=group,reparam=1"``.

    Raises
    ------
    TypeError
        ``name`` is not a string.
    ValueError
        Unknown architecture or option, malformed ``key=value``, repeated option, whitespace, or an
        ``act_clip`` that is not a finite number ``> 0``.
    """
    if not isinstance(name, str):
        raise TypeError(f"{fn}: model must be a model name (str) or a ModelFns, got {type(name).__name__}")
    base, at, options = name.partition("@")
    if base not in MODEL_NAMES:
        # Keeps the historical message prefix "model must be one of" for an unknown architecture.
        raise ValueError(
            f"{fn}: model must be one of {MODEL_NAMES}, optionally followed by '@act_clip=<c>', got {name!r}"
        )
    if any(ch.isspace() for ch in name):
        raise _name_error(fn, name, "must not contain whitespace")
    if not at:
        return ModelName(base)
    values: dict[str, str] = {}
    for item in options.split(","):
        key, eq, value = item.partition("=")
        if not (eq and key and value):
            raise _name_error(fn, name, f"option {item!r} is not of the form key=value")
        if key not in MODEL_OPTIONS:
            raise _name_error(fn, name, f"option {key!r} is unknown (known: {MODEL_OPTIONS})")
        if key in values:
            raise _name_error(fn, name, f"option {key!r} is given twice")
        values[key] = value
    act_clip = None
    if "act_clip" in values:
        try:
            act_clip = float(values["act_clip"])
        except ValueError:
            raise _name_error(fn, name, f"act_clip={values['act_clip']!r} is not a number") from None
        if not (math.isfinite(act_clip) and act_clip > 0):
            raise _name_error(fn, name, f"act_clip={values['act_clip']!r} is not a finite number > 0")
    norm = values.get("norm", "batch")
    if norm not in NORMS:
        raise _name_error(fn, name, f"norm={norm!r} is not one of {NORMS}")
    reparam = values.get("reparam", "0")
    if reparam not in _REPARAM_VALUES:
        raise _name_error(fn, name, f"reparam={reparam!r} is not one of {tuple(_REPARAM_VALUES)}")
    if base == "mlp" and ("norm" in values or "reparam" in values):
        raise _name_error(fn, name, "options norm and reparam need normalisation layers, which mlp has not")
    return ModelName(base, act_clip, norm, _REPARAM_VALUES[reparam])


def model_fns(model: str | ModelFns, fn: str = "model_fns") -> ModelFns:
    """The :class:`ModelFns` of a model name, or ``model`` itself if it already is one.

    Parameters
    ----------
    model : str or ModelFns
        ``"resnet20"``, ``"resnet18_cifar"``, ``"resnet18"``, ``"small_cnn"``, ``"mlp"``, optionally with
        options: ``"small_cnn@act_clip=6"``, ``"resnet20@norm=group,reparam=1"`` (see
        :func:`parse_model_name`).
    fn : str
        The function name errors are reported under.

    Returns
    -------
    ModelFns
        ``name`` is the canonical name (``"small_cnn@act_clip=6.0"`` for ``"small_cnn@act_clip=6"``);
        with an ``act_clip``, a ``norm`` or ``reparam``, ``forward`` passes them on to the model's forward
        function. The forward
        functions are module-level functions or ``functools.partial`` objects (not closures), so a
        ``ModelFns`` pickles too.
    """
    if isinstance(model, ModelFns):
        return model
    parsed = parse_model_name(model, fn)
    name, base, act_clip = parsed.canonical, parsed.base, parsed.act_clip
    if base == "small_cnn":
        forward, backward = small_cnn_forward, small_cnn_backward
    elif base == "mlp":
        forward, backward = mlp_forward, mlp_backward
    else:  # a ResNet: the architecture is a keyword of resnet_forward
        forward, backward = functools.partial(resnet_forward, arch=base), resnet_backward
    if act_clip is not None:
        forward = functools.partial(forward, act_clip=act_clip)
    if parsed.norm != "batch":
        forward = functools.partial(forward, norm=parsed.norm)
    if parsed.reparam:
        forward = functools.partial(forward, reparam=True)
    # Batch-norm ResNets evaluate faster without caches (bit-identical logits, tested; group norm and
    # reparam: the same unfused layers); small_cnn and mlp have no such mode.
    infer = None if base in ("small_cnn", "mlp") else functools.partial(forward, keep_cache=False)
    # Partials, not closures: they pickle, and so does the ModelFns.
    return ModelFns(name, forward, backward, infer)


def init_model(
    model: str,
    *,
    in_channels: int = 3,
    num_classes: int = 10,
    width: int | None = None,
    rng: np.random.Generator | int,
    dtype: Any = np.float32,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The initial ``(params, state)`` of a named model, with the name's normalisation options.

    ``init_model("resnet20@norm=group,reparam=1", in_channels=1, width=8, rng=0)`` is
    ``init_resnet("resnet20", in_channels=1, width=8, rng=0, norm="group", reparam=True)``; ``act_clip``
    changes no parameter and is ignored here.

    Parameters
    ----------
    model : str
        A model name (:func:`parse_model_name`), not ``"mlp"`` (its input size is not a channel count:
        use :func:`saf_ref.nn.small.init_mlp`).
    in_channels, num_classes : int
    width : int or None
        Channels of the first layer; None: the architecture's own (8 for the small CNN).
    rng : numpy.random.Generator or int
    dtype : float32 (default) or float64
    """
    fn = "init_model"
    parsed = parse_model_name(model, fn)
    if parsed.base == "mlp":
        raise ValueError(f"{fn}: model must have image inputs (not 'mlp': use init_mlp), got {model!r}")
    options = {"rng": rng, "dtype": dtype, "norm": parsed.norm, "reparam": parsed.reparam}
    if parsed.base == "small_cnn":
        return init_small_cnn(in_channels=in_channels, num_classes=num_classes,
                              width=8 if width is None else width, **options)  # fmt: skip
    return init_resnet(parsed.base, in_channels=in_channels, num_classes=num_classes, width=width, **options)
