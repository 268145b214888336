"""What an attack on stored weights maximizes: the objective, its gradient, and exact evaluation.

An :class:`AttackProblem` fixes a model, its running statistics and the attacked examples; it evaluates
any set of effective weights exactly (one forward pass in evaluation mode) and gives the gradient of
the objective with respect to the effective weights (one forward and one backward pass).

Math
----
With logits ``z = model(w; x)`` on the attacked examples and ``CE`` the mean softmax cross-entropy:

- untargeted: ``J(w) = CE(z, y)`` (the attacker maximizes the loss on the true labels);
- targeted at class ``t``: ``J(w) = -CE(z, t)`` (the attacker makes every attacked example predict ``t``).

A NaN objective (a network whose logits are NaN: it no longer computes anything) counts as the attacker's
best outcome in the untargeted case (``J = +inf``) and worst in the targeted case (``J = -inf``: NaN
logits predict no chosen class), so that every comparison of objectives is a total order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from saf_ref.nn.loss import cross_entropy_backward, cross_entropy_forward
from saf_ref.nn.registry import ModelFns

__all__ = ["AttackProblem", "Evaluation"]


class Evaluation(NamedTuple):
    """Exact evaluation of one set of effective weights on the attacked examples.

    Attributes
    ----------
    loss : float
        Mean cross-entropy against the true labels (NaN when the logits are).
    accuracy : float
        Fraction of attacked examples predicted as their true label (``argmax`` of the logits; a row
        holding NaN predicts the index of its first NaN, as ``numpy.argmax`` does).
    objective : float
        ``J(w)`` of the module docstring (never NaN).
    target_rate : float or None
        Targeted attacks: the fraction of attacked examples predicted as the target; None otherwise.
    """

    loss: float
    accuracy: float
    objective: float
    target_rate: float | None


class AttackProblem:
    """The model, state and attacked examples of one attack (arguments already validated).

    Parameters
    ----------
    fns : ModelFns
    state : dict str -> ndarray
        Running statistics (batch norm); used in evaluation mode, never updated.
    x : ndarray, shape (N, ...)
        The attacked examples (already restricted to the source class of a targeted attack).
    y : ndarray of int, shape (N,)
        Their true labels.
    target : int or None
        The target class of a targeted attack; None: untargeted.
    """

    def __init__(self, fns: ModelFns, state: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray,
                 target: int | None) -> None:
        self.fns = fns
        self.state = dict(state)
        self.x = x
        self.y = y.astype(np.int64)
        self.target = target
        # the labels the objective's cross-entropy is taken against
        self.obj_labels = self.y if target is None else np.full_like(self.y, target)
        self.sign = 1.0 if target is None else -1.0

    def logits(self, weights: Mapping[str, np.ndarray]) -> np.ndarray:
        """The logits of the attacked examples under ``weights`` (evaluation mode)."""
        z, _, _ = self.fns.forward(dict(weights), self.state, self.x, train=False)
        return z

    def objective_of(self, loss_obj: Any) -> float:
        """``sign * CE``, with NaN mapped to ``-inf`` / ``+inf`` as the module docstring says."""
        value = self.sign * float(loss_obj)
        return float(np.inf * self.sign) if np.isnan(value) else value

    def evaluate(self, weights: Mapping[str, np.ndarray]) -> Evaluation:
        """Exact :class:`Evaluation` of ``weights``."""
        with np.errstate(all="ignore"):  # a faulty network may compute with inf and NaN
            z = self.logits(weights)
            loss, _ = cross_entropy_forward(z, self.y)
            pred = np.argmax(z, axis=1)
            accuracy = float(np.mean(pred == self.y))
            if self.target is None:
                return Evaluation(float(loss), accuracy, self.objective_of(loss), None)
            loss_t, _ = cross_entropy_forward(z, self.obj_labels)
            rate = float(np.mean(pred == self.target))
            return Evaluation(float(loss), accuracy, self.objective_of(loss_t), rate)

    def gradient(self, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``dJ/dw`` for every parameter (keys and order of ``weights``), in the weights' dtype."""
        with np.errstate(all="ignore"):
            z, _, cache = self.fns.forward(dict(weights), self.state, self.x, train=False)
            _, ce_cache = cross_entropy_forward(z, self.obj_labels)
            dz = cross_entropy_backward(self.sign, ce_cache).dlogits
            return self.fns.backward(dz, cache).params
