"""Faults in a stored model: one fault model applied to every exposed tensor, or nested rates.

:func:`inject` takes a fault model of :mod:`saf_ref.bits.faultmodels` (``BitErrors(p)``,
``ExactCount(k)``, ``Bursts(rate, len)``, ``StuckAt(maps)``, ``Replay(faultlist)``; a bare
:class:`~saf_ref.bits.faultlist.FaultList` means ``Replay``) and always returns an :class:`Injection`
``(stored, faults)``: the new stored model and the FaultList that turns the clean one into it.
:func:`inject_nested` draws one pattern for several bit-error rates, nested.

Math
----
For each exposed tensor ``t`` (in stored order, one generator for all): ``codes_t' , F_t =
model.corrupt(codes_t)``; unexposed tensors and quantizer contexts are never touched. ``faults = F_1 + F_2
+ ...`` replays the result: ``inject(stored, faults).stored`` has the same codes. Nested: per tensor,
candidates of a Bernoulli(``max(rates)``) process and one uniform ``v`` per candidate; at rate ``p`` the
flips are the candidates with ``v < p / max(rates)``, so the flips at ``p1 < p2`` are among those at ``p2``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from saf_ref import validation
from saf_ref.bits.faultlist import FaultList
from saf_ref.bits.faultmodels import FaultModel, Target, as_fault_model
from saf_ref.bits.faults import sample_nested_flips, xor_flips
from saf_ref.bits.formats import stored_shape
from saf_ref.protect.spec import StorageRule
from saf_ref.protect.stored import StoredModel, check_stored

__all__ = ["Injection", "inject", "inject_nested"]


class Injection(NamedTuple):
    """What :func:`inject` returns: the faulty stored model and the faults that made it.

    Attributes
    ----------
    stored : StoredModel
        A new stored model (the input is never modified).
    faults : FaultList
        The records of what was done, replayable: ``inject(clean, faults)`` gives the same codes.
    """

    stored: StoredModel
    faults: FaultList


def targets_of(stored: StoredModel) -> dict[str, Target]:
    """Every stored tensor as a fault model's :class:`~saf_ref.bits.faultmodels.Target`, in stored order."""
    return {
        name: Target(name, t.code_shape, t.codes.dtype, t.nbits, t.format, t.exposed)
        for name, t in stored.tensors.items()
    }


def targets_from_rules(
    shapes: Mapping[str, tuple[int, ...]], rules: Mapping[str, StorageRule]
) -> dict[str, Target]:
    """The targets :func:`store` will create from parameters of ``shapes`` under ``rules`` (no encoding)."""
    return {
        name: Target(name, stored_shape(r.format, shape), r.format.container, r.format.nbits, r.format.name,
                     r.exposed)
        for name, shape in shapes.items()
        for r in (rules[name],)
    }


def check_fault_model(
    targets: Mapping[str, Target], faults: Any, rng: Any, fn: str
) -> tuple[FaultModel, np.random.Generator | None]:
    """Validate ``faults`` (a fault model or a FaultList) and ``rng`` against the tensors, once, up front."""
    model = as_fault_model(faults, fn)
    gen = model.check_rng(rng, fn)
    model.check_targets(targets, fn)
    return model, gen


def apply_model(stored: StoredModel, model: FaultModel, gen: np.random.Generator | None) -> Injection:
    """The unchecked core of :func:`inject`: the model on every exposed tensor, in stored order."""
    targets = targets_of(stored)
    new_codes, lists = {}, []
    for name in stored.exposed_names:
        codes, fl = model.corrupt(stored[name].codes, gen, targets[name])
        new_codes[name] = codes
        lists.append(fl)
    return Injection(stored.with_codes(new_codes), FaultList.concat(lists))


def inject(
    stored: StoredModel, faults: FaultModel | FaultList, *, rng: np.random.Generator | int | None = None
) -> Injection:
    """Corrupt the exposed tensors of a stored model with one fault model; return an :class:`Injection`.

    There is no PyTorch equivalent (with PyTorch one XORs a random mask into ``w.view(torch.int32)``).

    Parameters
    ----------
    stored : StoredModel
        Not modified (its codes are read-only).
    faults : fault model or FaultList
        ``BitErrors(p)`` (independent flips, each stored bit with probability ``p``), ``ExactCount(k)``
        (``k`` distinct flips per exposed tensor), ``Bursts(rate, burst_len)``, ``StuckAt(maps)`` (a
        chip's stuck bits), ``Replay(faultlist)`` or a bare FaultList (replay a recorded pattern: every
        record must name an exposed tensor of ``stored`` and carry its format), or any
        :class:`~saf_ref.bits.faultmodels.FaultModel` subclass.
    rng : numpy.random.Generator or int seed, or None
        Required by the random models; must be None for ``StuckAt`` and ``Replay`` (they draw nothing).

    Returns
    -------
    Injection
        ``(stored, faults)``: the new stored model and the FaultList of what was done.

    Math
    ----
    With ``BitErrors(p)`` each of the ``nbits * size`` stored bits of every exposed tensor flips
    independently with probability ``p``, so a tensor's flip count is ``Binomial(nbits * size, p)``.
    With a FaultList: ``codes' = ((codes XOR F) AND NOT S0) OR S1`` per tensor
    (:meth:`~saf_ref.bits.faultlist.FaultList.apply`). Unexposed tensors and the quantizer contexts are
    never touched.

    Notes
    -----
    - Exposed tensors are visited in the stored order with one generator, so the same ``rng`` seed gives
      the same bits; ``BitErrors(p)`` makes exactly the draws of
      :func:`~saf_ref.bits.faults.inject_bit_errors` tensor after tensor.
    - The returned FaultList replays the result exactly (``inject(stored, result.faults)``); flips for
      the random models, stuck records for ``StuckAt``, the records applied (grouped by tensor in stored
      order) for ``Replay``.
    """
    fn = "inject"
    check_stored(stored, fn)
    model, gen = check_fault_model(targets_of(stored), faults, rng, fn)
    return apply_model(stored, model, gen)


def inject_nested(
    stored: StoredModel, rates: Sequence[float], *, rng: np.random.Generator | int
) -> list[Injection]:
    """Random bit errors at several rates, nested: the flips at ``p1 < p2`` are among those at ``p2``.

    No PyTorch equivalent. This is how a bit-error-rate sweep draws one "chip" per trial: the faulty
    models at increasing rates share their faults, so accuracy against rate is a curve of one memory.

    Parameters
    ----------
    stored : StoredModel
        Not modified.
    rates : sequence of float in [0, 1]
        Bit-error rates, in any order.
    rng : numpy.random.Generator or int seed

    Returns
    -------
    list of Injection, one per rate in the order of ``rates``
        Each ``(stored, faults)``; ``faults`` replays with :func:`inject`.

    Math
    ----
    Per exposed tensor (in stored order), :func:`saf_ref.bits.faults.sample_nested_flips`: candidate
    flips of a Bernoulli(``max(rates)``) process over all its bits and one uniform ``v`` per candidate;
    at rate ``p`` the flips are the candidates with ``v < p / max(rates)``. Each bit flips at rate ``p``
    with probability ``p``, independently, and the patterns nest.
    """
    fn = "inject_nested"
    check_stored(stored, fn)
    rates = list(validation.check_rate_sequence(rates, fn, nonempty=False))
    gen = validation.check_rng(rng, fn)
    per_rate_codes: list[dict[str, np.ndarray]] = [{} for _ in rates]
    per_rate_faults: list[list[FaultList]] = [[] for _ in rates]
    for name in stored.exposed_names:
        t = stored[name]
        nested = sample_nested_flips(t.code_shape, t.nbits, rates, rng=gen)
        for i, flips in enumerate(nested):
            per_rate_codes[i][name] = xor_flips(t.codes, flips)  # valid by construction: no re-check
            per_rate_faults[i].append(
                FaultList.from_arrays(flips.index, flips.bit, kind="flip", tensor=name, format_name=t.format)
            )
    return [
        Injection(stored.with_codes(codes), FaultList.concat(fls))
        for codes, fls in zip(per_rate_codes, per_rate_faults, strict=True)
    ]
