"""Stochastic gradient descent with PyTorch's update rules, as pure functions on parameter dicts.

Parameters and gradients are ``dict[str, ndarray]`` keyed by parameter names (torchvision ``state_dict``
names). The optimizer state is a plain ``dict[str, ndarray]`` so that it can be checkpointed as is::

    {"step": array(7),                                   # int64, 0-d: number of steps taken
     "momentum_buffer/conv1.weight": array(...), ...}     # one per parameter once momentum is used

Usage::

    opt = SGD(0.1, momentum=0.9, weight_decay=5e-4)
    state = sgd_init(params)
    params, state = sgd_step(params, grads, state, opt)            # or opt.step(params, grads, state)
    params, state = sgd_step(params, grads, state, opt, lr=0.01)   # a scheduled learning rate
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from saf_ref import validation

STEP_KEY = "step"
BUFFER_PREFIX = "momentum_buffer/"


def _check_nonnegative(value: object, name: str, fn: str) -> float:
    """A real number >= 0 (NaN rejected); returned as float."""
    v = validation.check_real(value, name, fn)
    if not v >= 0.0:  # also catches NaN
        raise ValueError(f"{fn}: {name} must be >= 0, got {value!r}")
    return v


@dataclass(frozen=True)
class SGD:
    """SGD hyperparameters (PyTorch: ``torch.optim.SGD(params, lr, momentum, dampening, weight_decay,
    nesterov)``).

    Parameters
    ----------
    lr : float
        Learning rate, ``>= 0``. A per-step value (a schedule) can be passed to :func:`sgd_step`.
    momentum : float, default 0.0
        ``mu >= 0``; 0 disables the momentum buffer.
    dampening : float, default 0.0
        Finite; the new gradient enters the buffer with weight ``1 - dampening``.
    nesterov : bool, default False
        Nesterov momentum; requires ``momentum > 0`` and ``dampening == 0`` (as PyTorch).
    weight_decay : float, default 0.0
        L2 penalty ``>= 0`` added to the gradient (coupled, not AdamW-style decoupled decay).

    Notes
    -----
    Validation follows PyTorch's (``lr``, ``momentum`` and ``weight_decay`` must be non-negative; Nesterov
    needs momentum and no dampening) and additionally rejects NaN and a non-finite ``dampening``.
    """

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        fn = "SGD"
        set_ = object.__setattr__  # the dataclass is frozen; store validated plain floats
        set_(self, "lr", _check_nonnegative(self.lr, "lr", fn))
        set_(self, "momentum", _check_nonnegative(self.momentum, "momentum", fn))
        set_(self, "weight_decay", _check_nonnegative(self.weight_decay, "weight_decay", fn))
        dampening = validation.check_real(self.dampening, "dampening", fn)
        if not math.isfinite(dampening):
            raise ValueError(f"{fn}: dampening must be finite, got {self.dampening!r}")
        set_(self, "dampening", dampening)
        if not isinstance(self.nesterov, (bool, np.bool_)):
            raise TypeError(f"{fn}: nesterov must be a bool, got {type(self.nesterov).__name__}")
        set_(self, "nesterov", bool(self.nesterov))
        if self.nesterov and (self.momentum <= 0.0 or self.dampening != 0.0):
            raise ValueError(
                f"{fn}: nesterov=True requires momentum > 0 and dampening == 0, "
                f"got momentum={self.momentum!r} and dampening={self.dampening!r}"
            )

    def init(self, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Same as :func:`sgd_init`."""
        return sgd_init(params)

    def step(
        self,
        params: Mapping[str, np.ndarray],
        grads: Mapping[str, np.ndarray],
        state: Mapping[str, np.ndarray],
        lr: float | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Same as :func:`sgd_step` with this configuration."""
        return sgd_step(params, grads, state, self, lr=lr)


def _check_params(params: object, name: str, fn: str) -> Mapping[str, np.ndarray]:
    """A mapping of str -> float32/float64 array; every message names the tensor."""
    if not isinstance(params, Mapping):
        raise TypeError(f"{fn}: {name} must be a dict of str -> numpy.ndarray, got {type(params).__name__}")
    for key, value in params.items():
        if not isinstance(key, str):
            raise TypeError(f"{fn}: {name} keys must be str, got {type(key).__name__} {key!r}")
        validation.check_float(value, f"{name}[{key!r}]", fn)
    return params


def sgd_init(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A fresh optimizer state: ``{"step": array(0)}``, no momentum buffers yet.

    PyTorch creates each momentum buffer lazily on the first step (``buf = clone(g)``); so does
    :func:`sgd_step`, so the fresh state does not depend on the configuration.

    Parameters
    ----------
    params : dict[str, ndarray]
        The parameters (only validated: float32/float64 arrays keyed by str).
    """
    _check_params(params, "params", "sgd_init")
    return {STEP_KEY: np.array(0, dtype=np.int64)}


def _check_state(state: object, params: Mapping[str, np.ndarray], fn: str) -> int:
    """Validate the optimizer state against ``params``; return the step count."""
    if not isinstance(state, Mapping):
        raise TypeError(f"{fn}: state must be a dict of str -> numpy.ndarray, got {type(state).__name__}")
    if STEP_KEY not in state:
        raise ValueError(
            f"{fn}: state must have a {STEP_KEY!r} entry (use sgd_init), got keys {sorted(state)}"
        )
    step = validation.check_ndarray(state[STEP_KEY], f"state[{STEP_KEY!r}]", fn)
    if step.shape != () or step.dtype.kind not in "iu":
        raise TypeError(
            f"{fn}: state[{STEP_KEY!r}] must be a 0-d integer array, got {validation.describe(step)}"
        )
    count = validation.check_int(step.item(), f"state[{STEP_KEY!r}]", fn, low=0)
    for key, buf in state.items():
        if key == STEP_KEY:
            continue
        if not (isinstance(key, str) and key.startswith(BUFFER_PREFIX)):
            raise ValueError(
                f"{fn}: state key {key!r} must be {STEP_KEY!r} or start with {BUFFER_PREFIX!r}"
            )
        name = key[len(BUFFER_PREFIX):]
        if name not in params:
            raise ValueError(
                f"{fn}: state[{key!r}] is a momentum buffer for {name!r}, which is not in params"
            )
        validation.check_float(buf, f"state[{key!r}]", fn)
        validation.check_same_dtype(fn, **{f"params[{name!r}]": params[name], f"state[{key!r}]": buf})
        validation.check_shape(buf, f"state[{key!r}]", fn, params[name].shape)
    return count


def _check_grads(grads: object, params: Mapping[str, np.ndarray], fn: str) -> Mapping[str, np.ndarray]:
    """Same keys as params, same dtype and shape per tensor; every message names the tensor."""
    _check_params(grads, "grads", fn)
    for key in params:
        if key not in grads:
            raise ValueError(f"{fn}: grads is missing {key!r}, which is in params")
    for key in grads:
        if key not in params:
            raise ValueError(f"{fn}: grads has {key!r}, which is not in params")
        p, g = params[key], grads[key]
        validation.check_same_dtype(fn, **{f"params[{key!r}]": p, f"grads[{key!r}]": g})
        validation.check_shape(g, f"grads[{key!r}]", fn, p.shape)
    return grads


def sgd_update(
    p: np.ndarray,
    grad: np.ndarray,
    buf: np.ndarray | None,
    config: SGD,
    lr: float,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One parameter's update, in its dtype, with PyTorch's order of operations; returns ``(p', buf')``.

    Math
    ----
    With ``lambda`` = weight_decay, ``mu`` = momentum, ``tau`` = dampening, ``eta`` = lr::

        g   = grad + lambda * p                           (if lambda != 0)
        buf = g                                           (first step: the buffer is None)
        buf = mu * buf + (1 - tau) * g                    (later steps)            } if mu != 0
        g   = g + mu * buf   (nesterov)   or   g = buf    (otherwise)              }
        p'  = p - eta * g

    Parameters
    ----------
    p, grad : ndarray, float32 or float64, same dtype and shape
        The parameter and its gradient. Never modified.
    buf : ndarray of ``p``'s dtype and shape, or None
        The momentum buffer (None before the first momentum step).
    config : SGD
    lr : float >= 0
        The learning rate of this step.

    Notes
    -----
    Every product and sum is rounded to the parameter dtype (the scalars ``lambda``, ``mu``,
    ``1 - tau`` and ``eta`` are first rounded to it, as PyTorch does for ``alpha``). PyTorch's CPU
    kernels compute ``a + alpha * b`` (``add_(b, alpha=...)``) as one fused multiply-add, rounding once;
    the two can therefore differ by about half an ulp of ``alpha * b`` per operation. They agree bit for
    bit whenever those products are exact (e.g. ``eta``, ``mu``, ``lambda``, ``1 - tau`` powers of two).
    """
    fn = "sgd_update"
    if not isinstance(config, SGD):
        raise TypeError(f"{fn}: config must be an SGD, got {type(config).__name__}")
    validation.check_float(p, "p", fn)
    validation.check_float(grad, "grad", fn)
    if buf is not None:
        validation.check_float(buf, "buf", fn)
    validation.check_same_dtype(fn, p=p, grad=grad, buf=buf)  # a float64 grad would promote p silently
    validation.check_shape(grad, "grad", fn, p.shape)
    if buf is not None:
        validation.check_shape(buf, "buf", fn, p.shape)
    lr = _check_nonnegative(lr, "lr", fn)
    t = p.dtype.type
    g = grad
    if config.weight_decay != 0.0:
        g = g + t(config.weight_decay) * p  # torch: grad.add(param, alpha=weight_decay)
    if config.momentum != 0.0:
        mu = t(config.momentum)
        if buf is None:
            buf = g.copy()  # torch: buf = torch.clone(grad)
        else:
            buf = buf * mu + t(1.0 - config.dampening) * g  # torch: buf.mul_(mu).add_(g, alpha=1 - tau)
        g = g + mu * buf if config.nesterov else buf  # torch: grad.add(buf, alpha=mu) / grad = buf
    # torch: param.add_(grad, alpha=-lr); p + (-eta) * g == p - eta * g exactly (rounding is symmetric).
    # np.asarray because arithmetic on 0-d arrays returns NumPy scalars.
    new_p = np.asarray(p - t(lr) * g)
    return new_p, (None if buf is None else np.asarray(buf))


def sgd_step(
    params: Mapping[str, np.ndarray],
    grads: Mapping[str, np.ndarray],
    state: Mapping[str, np.ndarray],
    config: SGD,
    lr: float | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One SGD step on every parameter (PyTorch: ``torch.optim.SGD.step()``, single-tensor CPU path).

    Parameters
    ----------
    params : dict[str, ndarray]
        Parameters, float32 or float64 (each tensor keeps its own dtype).
    grads : dict[str, ndarray]
        Gradients with exactly the keys of ``params``; each of its parameter's dtype and shape.
    state : dict[str, ndarray]
        From :func:`sgd_init` or a previous step: ``"step"`` (0-d int64) and
        ``"momentum_buffer/<name>"`` arrays (of their parameter's dtype and shape).
    config : SGD
        Hyperparameters.
    lr : float, optional
        Learning rate for this step (``>= 0``), e.g. from a schedule; default ``config.lr``.

    Returns
    -------
    new_params : dict[str, ndarray]
        Updated parameters (new arrays, same keys, dtypes and shapes).
    new_state : dict[str, ndarray]
        ``"step"`` incremented by one; momentum buffers updated (created on first use, as PyTorch).

    Math
    ----
    Per tensor, see :func:`sgd_update`.

    Notes
    -----
    Inputs are never mutated. With ``momentum == 0`` existing momentum buffers are carried over
    unchanged (copied), as PyTorch keeps them in its state. PyTorch skips parameters whose ``.grad`` is
    ``None``; here every parameter needs a gradient (pass zeros, or leave the tensor out of ``params``).
    """
    fn = "sgd_step"
    if not isinstance(config, SGD):
        raise TypeError(f"{fn}: config must be an SGD, got {type(config).__name__}")
    _check_params(params, "params", fn)
    _check_grads(grads, params, fn)
    count = _check_state(state, params, fn)
    lr = config.lr if lr is None else _check_nonnegative(lr, "lr", fn)

    new_params: dict[str, np.ndarray] = {}
    new_state: dict[str, np.ndarray] = {STEP_KEY: np.array(count + 1, dtype=np.int64)}
    for name, p in params.items():
        key = BUFFER_PREFIX + name
        new_params[name], buf = sgd_update(p, grads[name], state.get(key), config, lr)
        if buf is not None:
            new_state[key] = buf if buf is not state.get(key) else buf.copy()
    return new_params, new_state
