"""Adversarial bit errors: choose ``k`` bits of the stored weights whose flips hurt the network most.

:func:`bit_flip_attack` attacks a model stored as a :class:`~saf_ref.protect.StorageSpec` says (any codec:
IEEE, ``qM.N``, per-tensor quantizers) and returns an :class:`AttackResult`: the chosen flips as a
:class:`~saf_ref.bits.FaultList` that replays exactly through :func:`saf_ref.protect.inject` and
:func:`saf_ref.protect.effective_weights`, and the loss / accuracy after each committed flip.

Methods
-------
``"pbs"``: the progressive bit search of Rakin et al., "Bit-Flip Attack: Crushing Neural Network with
Progressive Bit Search" (ICCV 2019), generalised to any codec: rank every allowed bit by the first-order
change of the objective computed from the exact decoded value of the flipped word, evaluate the best
``candidates`` exactly, commit the best, repeat ``k`` times. Stutz et al., "Random and Adversarial Bit
Error Robustness: Energy-Efficient and Secure DNN Accelerators" (TPAMI 2022) use such attacks, under
at most one flipped bit per weight, to define adversarial bit errors; ``one_per_word=True`` is that
constraint.

``"gradient"``: a gradient-guided search over sets of ``k`` flips with at most one flipped bit per word
(:mod:`saf_ref.attack.gradient`): the solution of the linearized problem at the clean weights, improved
by swaps proposed from the gradient at the current set and accepted only when the exact objective rises
(after Stutz et al.'s gradient attack on quantized weights under a Hamming constraint).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from saf_ref import validation
from saf_ref.attack.candidates import Candidate, FlipTable
from saf_ref.attack.checks import capacity, check_bits, check_classes, check_model_inputs, check_per_tensor
from saf_ref.attack.gradient import GradientRound, gradient_search
from saf_ref.attack.problem import AttackProblem, Evaluation
from saf_ref.bits.faultlist import FaultList
from saf_ref.determinism import blas_threads_pinned
from saf_ref.nn.registry import ModelFns
from saf_ref.protect.spec import StorageSpec
from saf_ref.protect.stored import NONFINITE_POLICIES, read, write

__all__ = ["METHODS", "AttackResult", "AttackStep", "bit_flip_attack"]

#: The search methods of :func:`bit_flip_attack`.
METHODS = ("pbs", "gradient")

_FN = "bit_flip_attack"


class AttackStep(NamedTuple):
    """The state of the attack after ``flips`` committed flips (``flips = 0``: the clean model).

    Attributes
    ----------
    flips : int
        Flips committed so far.
    tensor : str or None
        The tensor of the flip committed at this step (None for the clean model).
    index, bit : int or None
        Flat index of the word and the bit (0 = LSB) flipped at this step.
    estimate : float or None
        The first-order estimate of the objective change that ranked this flip.
    loss, accuracy, objective, target_rate : float
        The exact :class:`~saf_ref.attack.problem.Evaluation` after this step (``target_rate`` None
        when the attack is untargeted).
    """

    flips: int
    tensor: str | None
    index: int | None
    bit: int | None
    estimate: float | None
    loss: float
    accuracy: float
    objective: float
    target_rate: float | None


@dataclass(frozen=True)
class AttackResult:
    """What :func:`bit_flip_attack` returns.

    Attributes
    ----------
    faults : FaultList
        The committed flips in commit order (kind ``"flip"``, tensor names, formats); replay with
        ``saf_ref.protect.inject(store(latents, spec), faults)`` or
        ``effective_weights(latents, spec, faults=faults)``.
    steps : tuple of AttackStep
        ``steps[0]`` is the clean model, ``steps[j]`` the model after ``j`` flips.
    settings : dict
        The attack's settings (method, budget, target, source, constraints), JSON-ready.
    rounds : tuple of GradientRound
        Method ``"gradient"``: the objective after its initial set and after each accepted move;
        empty for ``"pbs"``.
    """

    faults: FaultList
    steps: tuple[AttackStep, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    rounds: tuple[GradientRound, ...] = ()

    @property
    def final(self) -> AttackStep:
        """The last step (after every committed flip)."""
        return self.steps[-1]

    def records(self) -> list[dict[str, Any]]:
        """One tidy dict per step: the settings' method and budget, then the :class:`AttackStep` fields."""
        head = {"method": self.settings.get("method"), "budget": self.settings.get("k")}
        return [{**head, **s._asdict()} for s in self.steps]

    def to_json(self) -> str:
        """Settings, steps and faults as JSON text (floats as ``repr``; inf as the JSON extension)."""
        doc = {"settings": self.settings, "steps": [s._asdict() for s in self.steps],
               "rounds": [r._asdict() for r in self.rounds],
               "faults": json.loads(self.faults.to_json())["faults"]}
        return json.dumps(doc, indent=1)


def _select_examples(x: np.ndarray, y: np.ndarray, source: int | None) -> tuple[np.ndarray, np.ndarray]:
    if source is None:
        return x, y
    keep = y == source
    if not keep.any():
        raise ValueError(f"{_FN}: the attack batch must hold examples of the source class {source}, got "
                         f"none among the labels {sorted(set(y.tolist()))}")
    return x[keep], y[keep]


# ==================================================================================================
# The attack
# ==================================================================================================


def bit_flip_attack(
    model: str | ModelFns,
    latents: Mapping[str, np.ndarray],
    state: Mapping[str, np.ndarray],
    spec: StorageSpec,
    x: np.ndarray,
    y: np.ndarray,
    *,
    k: int,
    method: str = "pbs",
    target: int | None = None,
    source: int | None = None,
    bits: None | str | Sequence[int] = None,
    per_tensor: None | int | Mapping[str, int] = None,
    one_per_word: bool | None = None,
    candidates: int = 8,
    iterations: int = 10,
    nonfinite: str = "propagate",
) -> AttackResult:
    """Flip ``k`` bits of the stored weights to maximize the loss (or to force a target class).

    There is no PyTorch equivalent; Rakin et al.'s reference code implements ``"pbs"`` for 8-bit two's
    complement weights in PyTorch.

    Parameters
    ----------
    model : str or ModelFns
        A model name of :func:`saf_ref.nn.registry.model_fns` (``"mlp"``, ``"small_cnn"``,
        ``"resnet20"``, ...) or its functions.
    latents : dict str -> ndarray
        The stored latents ``u`` (float32 or float64). Never modified.
    state : dict str -> ndarray
        Running statistics; the model runs in evaluation mode.
    spec : StorageSpec
        How the latents are stored; only tensors its rules mark ``exposed`` are attacked.
    x : ndarray, shape (N, ...), the latents' dtype
        The attack batch (keep it apart from the evaluation data).
    y : ndarray of int, shape (N,)
        True labels of ``x``.
    k : int
        The budget: exactly ``k`` distinct bits are flipped, ``0 <= k <=`` the number of bits the
        constraints allow.
    method : {"pbs", "gradient"}
        The search (module docstring; :mod:`saf_ref.attack.gradient` for ``"gradient"``).
    target : int or None
        None: untargeted (maximize the cross-entropy on ``y``). A class ``t``: make the attacked
        examples predict ``t`` (minimize their cross-entropy against ``t``).
    source : int or None
        Targeted attacks: attack only the examples of ``x`` labelled ``source`` (None: all of them).
    bits : None, "msb" or sequence of int
        Allowed bit positions (0 = LSB): all (None), the most significant bit of each word (``"msb"``:
        the sign bit of IEEE and two's complement words), or these positions (those at or above a
        tensor's width do not apply to it).
    per_tensor : None, int or dict str -> int
        At most this many flips per tensor (one cap for all, or per exposed tensor name; None: no cap).
    one_per_word : bool or None
        At most one flipped bit per stored word (Hamming distance at most 1 per weight). None: the
        method's default, False for ``"pbs"``; ``"gradient"`` requires True (None or True).
    candidates : int >= 1
        ``"pbs"``: how many of the best-ranked flips are evaluated exactly at each step.
    iterations : int >= 0
        ``"gradient"``: at most this many rounds of improving moves after the initial set.
    nonfinite : {"propagate", "zero"}
        The read path's non-finite policy (see :func:`saf_ref.protect.load`); replay with the same.

    Returns
    -------
    AttackResult
        ``faults`` (``k`` flip records in commit order) and ``steps`` (clean model, then after each flip;
        for ``"gradient"``, the final set's flips added one by one in order of first-order gain, so
        ``steps[k]`` is the final set).

    Math
    ----
    Objective ``J`` (see :mod:`saf_ref.attack.problem`): ``CE(model(w; x), y)`` untargeted,
    ``-CE(model(w; x_s), t)`` targeted, with ``w = f(decode(codes') / s)`` read from the attacked codes
    ``codes'``. Step ``j = 1..k`` of the progressive bit search:

    1. ``g = dJ/dw`` at the current weights (one forward and backward pass on the batch);
    2. for every allowed, not yet used bit ``b`` of word ``i`` of tensor ``t``:
       ``dJ_est = g_t[i] * (w_flip_t[b, i] - w_t[i])`` with ``w_flip`` the exact value read from
       ``codes'_t[i] XOR 2^b`` (see :mod:`saf_ref.attack.candidates`);
    3. evaluate ``J`` exactly for the ``candidates`` flips of largest ``dJ_est`` (ties: tensor order,
       then index, then bit) and commit the one of largest ``J`` (ties: the better ranked).

    The search is deterministic: it draws nothing, and every tie is broken by position. ``"gradient"``
    is described in :mod:`saf_ref.attack.gradient`.

    Notes
    -----
    - A bit is flipped at most once (a second flip would undo the first), so the FaultList holds ``k``
      distinct ``(tensor, index, bit)`` records and the Hamming distance to the clean codes is ``k``.
    - A committed flip is kept even if it lowers ``J`` (Rakin et al. do the same); the trajectory shows it.
    - The quantizers' contexts (range, step) are those of the clean latents and are never attacked, as
      in :func:`saf_ref.protect.inject`.
    """
    # --- validation, cheapest first, all before any forward pass --------------------------------------
    fns, _, shapes, rules, exposed = check_model_inputs(model, latents, state, spec, x, y, _FN)
    k = validation.check_int(k, "k", _FN, low=0)
    validation.check_choice(method, "method", _FN, METHODS)
    validation.check_choice(nonfinite, "nonfinite", _FN, NONFINITE_POLICIES)
    if one_per_word is None:
        one_per_word = method == "gradient"
    one_per_word = validation.check_bool(one_per_word, "one_per_word", _FN)
    if method == "gradient" and not one_per_word:
        raise ValueError(f"{_FN}: one_per_word must be True or None for method 'gradient' (one flipped bit "
                         f"per word), got False")
    candidates = validation.check_int(candidates, "candidates", _FN, low=1)
    iterations = validation.check_int(iterations, "iterations", _FN, low=0)
    target = None if target is None else validation.check_int(target, "target", _FN, low=0)
    source = None if source is None else validation.check_int(source, "source", _FN, low=0)
    if source is not None and target is None:
        raise ValueError(f"{_FN}: source must be None for an untargeted attack (target=None), got {source}")
    allowed = check_bits(bits, rules, exposed, _FN)
    budgets = check_per_tensor(per_tensor, exposed, _FN)
    most = capacity(shapes, allowed, budgets, one_per_word)
    if k > most:
        raise ValueError(f"{_FN}: k must be at most {most}, the bits the exposed tensors and the "
                         f"constraints allow, got {k}")
    xs, ys = _select_examples(x, y, source)

    settings = {"method": method, "k": k, "target": target, "source": source,
                "bits": bits if bits is None or isinstance(bits, str) else [int(b) for b in bits],
                "per_tensor": None if per_tensor is None else {n: int(v) for n, v in per_tensor.items()}
                if isinstance(per_tensor, Mapping) else int(per_tensor),  # (a numpy int is not JSON)
                "one_per_word": one_per_word, "nonfinite": nonfinite, "model": fns.name,
                **({"candidates": candidates} if method == "pbs" else {"iterations": iterations})}
    with blas_threads_pinned():
        stored = write(latents, spec, rules, _FN, "latents")
        table = FlipTable(stored, spec, rules, allowed, budgets, nonfinite, one_per_word)
        weights, _ = read(stored, rules, nonfinite, _FN)
        problem = AttackProblem(fns, state, xs, ys, target)
        check_classes(y, problem.logits(weights).shape[1], _FN, target=target, source=source)
        clean = problem.evaluate(weights)
        steps = [_step(0, None, None, clean)]
        records, rounds = [], []
        if method == "pbs":
            for j in range(1, k + 1):
                c, weights, ev = _pbs_step(problem, table, weights, candidates)
                e = table.entries[c.tensor]
                table.commit(c)
                records.append((e.name, c.index, c.bit, "flip", e.template.format))
                steps.append(_step(j, (e.name, c), c.estimate, ev))
        else:
            flips, rounds, _ = gradient_search(problem, table, weights, k, iterations)
            for j, c in enumerate(flips, start=1):  # the trajectory: the final set, flip by flip
                e = table.entries[c.tensor]
                weights = with_flip(weights, e.name, c.index, table.flipped_value(c))
                records.append((e.name, c.index, c.bit, "flip", e.template.format))
                steps.append(_step(j, (e.name, c), c.estimate, problem.evaluate(weights)))
    return AttackResult(FaultList(records), tuple(steps), settings, tuple(rounds))


def _step(j: int, flip: tuple[str, Candidate] | None, estimate: float | None, ev: Evaluation) -> AttackStep:
    name, c = flip if flip is not None else (None, None)
    return AttackStep(j, name, None if c is None else c.index, None if c is None else c.bit, estimate,
                      ev.loss, ev.accuracy, ev.objective, ev.target_rate)


def with_flip(weights: Mapping[str, np.ndarray], name: str, index: int, value: np.generic) -> dict:
    """A new weights dict in which word ``index`` of tensor ``name`` is ``value`` (the rest shared)."""
    out = dict(weights)
    w = np.array(weights[name], copy=True, order="C")
    w.reshape(-1)[index] = value
    out[name] = w
    return out


def _pbs_step(problem: AttackProblem, table: FlipTable, weights: dict, n: int):
    """One step of the progressive bit search: rank, evaluate the best ``n`` exactly, pick the best."""
    grads = problem.gradient(weights)
    est = table.estimates(grads, weights, problem.sign)
    best = None
    for c in table.top(est, n):
        name = table.entries[c.tensor].name
        trial = with_flip(weights, name, c.index, table.flipped_value(c))
        ev = problem.evaluate(trial)
        if best is None or ev.objective > best[2].objective:
            best = (c, trial, ev)
    return best
