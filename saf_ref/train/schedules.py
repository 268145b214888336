"""Learning-rate schedules as pure functions of the step (or epoch) index: ``schedule.lr_at(t)``.

The unit of ``t`` is the caller's: call ``lr_at(epoch)`` once per epoch or ``lr_at(step)`` once per
optimizer step. ``t = 0`` is the first epoch/step. Each schedule is a frozen dataclass, so it is
hashable, comparable and printable, and has no hidden state: ``lr_at(t)`` never depends on earlier calls
(PyTorch's schedulers are stateful objects that update ``optimizer.param_groups`` as they step; the values
here are their documented closed forms, which the stateful recursions approximate to rounding).

Usage::

    sched = Warmup(Cosine(0.1, t_max=195), warmup=5, start_factor=0.1)
    for epoch in range(200):
        lr = sched.lr_at(epoch)
        ...  params, opt_state = sgd_step(params, grads, opt_state, opt, lr=lr)
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from saf_ref import validation


@runtime_checkable
class Schedule(Protocol):
    """Anything with ``lr_at(t: int) -> float`` and a ``base_lr``."""

    base_lr: float

    def lr_at(self, t: int) -> float:  # pragma: no cover - protocol
        ...


def _check_lr(value: object, name: str, fn: str) -> float:
    v = validation.check_real(value, name, fn)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{fn}: {name} must be a finite number >= 0, got {value!r}")
    return v


def _check_t(t: object, fn: str) -> int:
    return validation.check_int(t, "t", fn, low=0)


class _Values:
    """Mixin: ``values(n)`` and ``__call__``."""

    def lr_at(self, t: int) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def __call__(self, t: int) -> float:
        """Same as :meth:`lr_at`."""
        return self.lr_at(t)

    def values(self, n: int) -> list[float]:
        """``[lr_at(0), ..., lr_at(n - 1)]``."""
        n = validation.check_int(n, "n", f"{type(self).__name__}.values", low=0)
        return [self.lr_at(t) for t in range(n)]


@dataclass(frozen=True)
class Constant(_Values):
    """A constant learning rate (PyTorch: no scheduler).

    Parameters
    ----------
    base_lr : float
        ``>= 0``, finite.
    """

    base_lr: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_lr", _check_lr(self.base_lr, "base_lr", "Constant"))

    def lr_at(self, t: int) -> float:
        """``base_lr`` for every ``t >= 0``."""
        _check_t(t, "Constant.lr_at")
        return self.base_lr


@dataclass(frozen=True)
class MultiStep(_Values):
    """Step decay at milestones (PyTorch: ``torch.optim.lr_scheduler.MultiStepLR``).

    Parameters
    ----------
    base_lr : float
        Learning rate before the first milestone, ``>= 0``.
    milestones : sequence of int
        Strictly increasing indices ``>= 0`` (stored as a tuple). PyTorch also accepts unsorted and
        repeated milestones (a repeat multiplies by ``gamma`` twice); here they are an error.
    gamma : float, default 0.1
        Multiplicative factor, finite and ``> 0``.

    Math
    ----
    ``lr(t) = base_lr * gamma ** k(t)`` with ``k(t) = #{m in milestones : m <= t}``: the decay applies
    *from* the milestone index on, as ``MultiStepLR``'s closed form (``bisect_right``).
    """

    base_lr: float
    milestones: tuple[int, ...]
    gamma: float = 0.1

    def __post_init__(self) -> None:
        fn = "MultiStep"
        object.__setattr__(self, "base_lr", _check_lr(self.base_lr, "base_lr", fn))
        try:
            ms = tuple(self.milestones)
        except TypeError:
            raise TypeError(
                f"{fn}: milestones must be a sequence of int, got {type(self.milestones).__name__}"
            ) from None
        ms = tuple(validation.check_int(m, f"milestones[{i}]", fn, low=0) for i, m in enumerate(ms))
        for i in range(1, len(ms)):
            if ms[i] <= ms[i - 1]:
                raise ValueError(f"{fn}: milestones must be strictly increasing, got {list(ms)}")
        object.__setattr__(self, "milestones", ms)
        gamma = validation.check_real(self.gamma, "gamma", fn)
        if not (math.isfinite(gamma) and gamma > 0.0):
            raise ValueError(f"{fn}: gamma must be a finite number > 0, got {self.gamma!r}")
        object.__setattr__(self, "gamma", gamma)

    def lr_at(self, t: int) -> float:
        """``base_lr * gamma ** (number of milestones <= t)``."""
        t = _check_t(t, "MultiStep.lr_at")
        return self.base_lr * self.gamma ** bisect.bisect_right(self.milestones, t)


@dataclass(frozen=True)
class Cosine(_Values):
    """Cosine annealing from ``base_lr`` to ``eta_min`` over ``t_max`` (PyTorch: ``CosineAnnealingLR``).

    Parameters
    ----------
    base_lr : float
        Learning rate at ``t = 0``, ``>= 0``.
    t_max : int
        Half period, ``>= 1``: ``lr(t_max) = eta_min``.
    eta_min : float, default 0.0
        Minimum learning rate, ``>= 0``.

    Math
    ----
    ``lr(t) = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / t_max)) / 2``.

    Notes
    -----
    Like PyTorch's ``CosineAnnealingLR`` (closed form and recursion alike), the formula is used for every
    ``t``: past ``t_max`` the rate rises again (period ``2 t_max``); it is *not* held at ``eta_min``. Set
    ``t_max`` to the number of epochs (or steps) of training to avoid that.
    """

    base_lr: float
    t_max: int
    eta_min: float = 0.0

    def __post_init__(self) -> None:
        fn = "Cosine"
        object.__setattr__(self, "base_lr", _check_lr(self.base_lr, "base_lr", fn))
        object.__setattr__(self, "t_max", validation.check_int(self.t_max, "t_max", fn, low=1))
        object.__setattr__(self, "eta_min", _check_lr(self.eta_min, "eta_min", fn))

    def lr_at(self, t: int) -> float:
        """The cosine closed form at ``t`` (same expression, same rounding, as PyTorch's)."""
        t = _check_t(t, "Cosine.lr_at")
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.t_max)) / 2


@dataclass(frozen=True)
class Warmup(_Values):
    """Linear warmup, then another schedule (PyTorch: ``SequentialLR([LinearLR(start_factor,
    total_iters=warmup), after], milestones=[warmup])``).

    Parameters
    ----------
    after : Schedule
        The schedule used from ``t = warmup`` on (:class:`Constant`, :class:`MultiStep`,
        :class:`Cosine`); it starts its own clock at 0 there.
    warmup : int
        Number of warmup steps/epochs, ``>= 1``.
    start_factor : float, default 1/3
        ``lr(0) = start_factor * after.base_lr``; in ``(0, 1]`` (PyTorch's ``LinearLR`` default and
        range).

    Math
    ----
    ``lr(t) = base * (s + (1 - s) * t / warmup)`` for ``t < warmup`` (``base = after.base_lr``,
    ``s = start_factor``), and ``lr(t) = after.lr_at(t - warmup)`` for ``t >= warmup``.

    Notes
    -----
    As with ``SequentialLR``, the wrapped schedule's milestones and ``t_max`` count from the end of the
    warmup: ``Warmup(MultiStep(0.1, [100, 150]), warmup=5)`` decays at absolute indices 105 and 155.
    """

    after: Schedule
    warmup: int
    start_factor: float = 1.0 / 3.0

    def __post_init__(self) -> None:
        fn = "Warmup"
        if not isinstance(self.after, Schedule):
            raise TypeError(
                f"{fn}: after must be a schedule with base_lr and lr_at(t), got {type(self.after).__name__}"
            )
        object.__setattr__(self, "warmup", validation.check_int(self.warmup, "warmup", fn, low=1))
        s = validation.check_real(self.start_factor, "start_factor", fn)
        if not 0.0 < s <= 1.0:
            raise ValueError(f"{fn}: start_factor must be in (0, 1], got {self.start_factor!r}")
        object.__setattr__(self, "start_factor", s)

    @property
    def base_lr(self) -> float:
        """The wrapped schedule's base learning rate (reached at the end of the warmup)."""
        return self.after.base_lr

    def lr_at(self, t: int) -> float:
        """Linear ramp for ``t < warmup``, then ``after.lr_at(t - warmup)``."""
        t = _check_t(t, "Warmup.lr_at")
        if t >= self.warmup:
            return self.after.lr_at(t - self.warmup)
        s = self.start_factor
        # Same expression and evaluation order as LinearLR's closed form (end_factor = 1).
        return self.base_lr * (s + (1.0 - s) * min(self.warmup, t) / self.warmup)
