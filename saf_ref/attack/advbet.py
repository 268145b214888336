"""Adversarial bit-error training (AdvBET): the attack the training loop runs on every step.

Stutz et al., "Random and Adversarial Bit Error Robustness: Energy-Efficient and Secure DNN
Accelerators" (TPAMI 2022) train on bit errors chosen by an attack on the current quantized weights,
with the clean gradient, gradient clamp, weight clipping and robust quantization of RandBET. Here the
one training loop (:func:`saf_ref.train.loop.train`) does the training; this module gives it the attack.
The training layer sits below the attack (it never imports :mod:`saf_ref.attack`), so the attack is
*injected*: an :class:`AdvBETConfig` is passed as ``RandBETConfig(adversarial=...)`` and the loop calls
its :meth:`~AdvBETConfig.faults` (the protocol :class:`saf_ref.train.randbet.AdversarialErrors`)::

    from saf_ref.attack import AdvBETConfig
    from saf_ref.train import SGD, RandBETConfig, train

    config = RandBETConfig(p_train=0.0, weight_clip=0.1,
                           adversarial=AdvBETConfig(k_train=20, method="gradient", iterations=1))
    params, state, history = train(params, state, data, model="small_cnn", spec=spec, epochs=10,
                                   optimizer=SGD(0.05, momentum=0.9), randbet=config, rng=0)

Per step (with errors on), on the step's batch ``(x, y)``:

1. ``F_adv = bit_flip_attack(model, u, state, spec, x, y, k=k_train, ...).faults``: the attack sees the
   model as it is stored before the step (latents through the spec, running statistics, evaluation mode);
2. the clean pass and the perturbed pass(es) of :func:`saf_ref.train.randbet.randbet_gradients`, the
   adversarial one replaying ``F_adv`` through ``effective_weights(u, spec, faults=F_adv)`` (train mode);
3. ``g = (g_clean + clamp(g_adv)) / 2`` (or ``(g_clean + clamp(g_rand) + clamp(g_adv)) / 3`` with
   ``p_train > 0``), one SGD step, weight clipping.

What the reference code does, and what is chosen here
-----------------------------------------------------
The reference code (github.com/davidstutz/random-bit-error-robustness, ``common/train/``) has three
trainers that take an attack:

- ``AdversarialWeightsTraining``: the update is the clamped perturbed gradient alone, averaged over the
  ``population`` of attacks; the clean forward pass only sets the running statistics, and the attack
  runs in evaluation mode after it (so with the statistics just updated by this batch);
- ``AverageWeightsTraining`` (used for RandBET with a random-bit-error "attack"):
  ``(g_clean + sum_i clamp(g_i)) / (population + 1)``;
- ``AlternatingWeightsTraining``: a clean SGD step, then an attack on the updated weights and a second
  step with ``(g_clean + clamp(g_adv)) / 2``.

saf_ref uses the ``AverageWeightsTraining`` combination with the attack plugged in (the rule the issue
asks for: "combined with the clean gradient as RandBET does"), so AdvBET and RandBET differ only in where
the bit-error pattern comes from, and ``p_train > 0`` with an attack is the same rule with a population of
two (one random, one adversarial pattern per step). Two differences from the reference, both for a
simpler contract: the attack sees the running statistics as they were *before* the step's clean pass
(the stored model at that moment), and a step has at most one adversarial pattern (no ``population``).
A per-step random choice between random and adversarial errors is not built.

Cost: the attack adds, per step, one forward and backward pass on the batch plus ``k_train`` exact
evaluations for ``"pbs"`` (``candidates`` each), or one plus up to ``iterations`` gradient rounds and
their exact evaluations for ``"gradient"`` (default ``iterations=1``: a cheap attack, as in training).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from saf_ref import validation
from saf_ref.attack.checks import capacity, check_bits, check_per_tensor
from saf_ref.attack.search import METHODS, bit_flip_attack
from saf_ref.bits.faultlist import FaultList
from saf_ref.nn.registry import ModelFns
from saf_ref.protect.spec import StorageSpec, check_spec

__all__ = ["AdvBETConfig"]


@dataclass(frozen=True)
class AdvBETConfig:
    """The attack of adversarial bit-error training: :func:`~saf_ref.attack.bit_flip_attack` settings.

    Pass it as ``saf_ref.train.RandBETConfig(adversarial=AdvBETConfig(...))``; see the module docstring.

    Parameters
    ----------
    k_train : int >= 1
        Bits the attack flips on every training step (the budget ``k`` of :func:`bit_flip_attack`).
    method : {"pbs", "gradient"}, default "gradient"
        The search (:func:`bit_flip_attack`).
    iterations : int >= 0, default 1
        ``"gradient"``: rounds of improving swaps after the one-shot linearized solution.
    candidates : int >= 1, default 4
        ``"pbs"``: flips evaluated exactly at each of the ``k_train`` steps.
    bits : None, "msb" or sequence of int
        Allowed bit positions (0 = LSB), as :func:`bit_flip_attack`.
    per_tensor : None, int or dict str -> int
        At most this many flips per tensor, as :func:`bit_flip_attack` (a dict is kept as a tuple of
        ``(name, cap)`` pairs, so that the configuration stays hashable).
    one_per_word : bool or None
        At most one flipped bit per stored word; None: the method's default (as :func:`bit_flip_attack`).

    Math
    ----
    ``F_adv = argmax_{F: |F| = k_train, constraints} CE(model(f(decode(F(encode(clip(u))))); x), y)``,
    approximately (the search of ``method``), on the step's batch, evaluation mode.
    """

    k_train: int
    method: str = "gradient"
    iterations: int = 1
    candidates: int = 4
    bits: None | str | tuple[int, ...] = None
    per_tensor: None | int | Mapping[str, int] | tuple[tuple[str, int], ...] = None
    one_per_word: bool | None = None

    def __post_init__(self) -> None:
        fn = "AdvBETConfig"
        set_ = object.__setattr__  # frozen dataclass: store the validated plain values
        set_(self, "k_train", validation.check_int(self.k_train, "k_train", fn, low=1))
        validation.check_choice(self.method, "method", fn, METHODS)
        set_(self, "iterations", validation.check_int(self.iterations, "iterations", fn, low=0))
        set_(self, "candidates", validation.check_int(self.candidates, "candidates", fn, low=1))
        if self.bits is not None and not isinstance(self.bits, str):
            if not isinstance(self.bits, (Sequence, np.ndarray)):
                raise TypeError(f"{fn}: bits must be None, 'msb' or a sequence of bit positions, "
                                f"got {validation.describe(self.bits)}")
            set_(self, "bits", tuple(validation.check_int(b, f"bits[{i}]", fn, low=0, high=63)
                                     for i, b in enumerate(self.bits)))
        elif isinstance(self.bits, str):
            validation.check_choice(self.bits, "bits", fn, ("msb",))
        if isinstance(self.per_tensor, (Mapping, tuple)):
            pairs = self.per_tensor.items() if isinstance(self.per_tensor, Mapping) else self.per_tensor
            for pair in pairs:  # a tuple must hold (name, cap) pairs, as a dict is kept
                if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
                    raise TypeError(f"{fn}: per_tensor must be None, an int, a dict str -> int or a tuple of "
                                    f"(name, cap) pairs, got {self.per_tensor!r}")
            set_(self, "per_tensor", tuple((k, validation.check_int(v, f"per_tensor[{k!r}]", fn, low=0))
                                           for k, v in pairs))
        elif self.per_tensor is not None:
            set_(self, "per_tensor", validation.check_int(self.per_tensor, "per_tensor", fn, low=0))
        if self.one_per_word is not None:  # a Python bool: to_dict() goes into JSON (numpy.bool_ does not)
            set_(self, "one_per_word", validation.check_bool(self.one_per_word, "one_per_word", fn))
            if self.method == "gradient" and not self.one_per_word:
                raise ValueError(f"{fn}: one_per_word must be True or None for method 'gradient' (one "
                                 f"flipped bit per word), got False")

    def check(self, params: Mapping[str, np.ndarray], spec: StorageSpec, *, model: ModelFns, fn: str) -> None:
        """Refuse, before training, a spec that exposes nothing or a budget the constraints cannot meet.

        (``model`` is part of the protocol; the budget depends only on the stored tensors.)
        """
        check_spec(spec, fn)
        shapes = {name: np.shape(u) for name, u in params.items()}
        rules = spec.resolve(shapes, fn)
        exposed = [name for name in shapes if rules[name].exposed]
        if not exposed:
            raise ValueError(f"{fn}: spec must expose at least one parameter to the AdvBET attack, got none "
                             f"exposed among {tuple(shapes)}")
        allowed = check_bits(self.bits, rules, exposed, fn)
        budgets = check_per_tensor(self._per_tensor(), exposed, fn)
        one_per_word = self.method == "gradient" if self.one_per_word is None else self.one_per_word
        most = capacity(shapes, allowed, budgets, one_per_word)
        if self.k_train > most:
            raise ValueError(f"{fn}: k_train must be at most {most}, the bits the exposed tensors and the "
                             f"attack's constraints allow, got {self.k_train}")

    def faults(self, params: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray], x: np.ndarray,
               y: np.ndarray, *, model: str | ModelFns, spec: StorageSpec, nonfinite: str) -> FaultList:
        """The ``k_train`` flips :func:`bit_flip_attack` chooses on the batch (deterministic; nothing is
        modified)."""
        result = bit_flip_attack(
            model, params, state, spec, x, y, k=self.k_train, method=self.method, bits=self.bits,
            per_tensor=self._per_tensor(), one_per_word=self.one_per_word, candidates=self.candidates,
            iterations=self.iterations, nonfinite=nonfinite,
        )
        return result.faults

    def _per_tensor(self) -> None | int | dict[str, int]:
        """``per_tensor`` as :func:`bit_flip_attack` takes it."""
        return dict(self.per_tensor) if isinstance(self.per_tensor, tuple) else self.per_tensor

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON (a checkpoint's identity stores them)."""
        return {
            "attack": "bit_flip_attack",
            "k_train": self.k_train,
            "method": self.method,
            "iterations": self.iterations,
            "candidates": self.candidates,
            "bits": list(self.bits) if isinstance(self.bits, tuple) else self.bits,
            "per_tensor": self._per_tensor(),
            "one_per_word": self.one_per_word,
        }
