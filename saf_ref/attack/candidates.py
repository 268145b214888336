"""Candidate bit flips: the exact value each flip gives and the first-order change of the objective.

A :class:`FlipTable` holds, for every exposed tensor, its current (possibly already attacked) codes and,
for every allowed bit position ``b`` and word ``i``, the effective weight the word would read as if bit
``b`` were flipped: ``w_flip[b, i] = f(decode(codes[i] XOR 2^b) / s)``, computed through the same read
path as :func:`saf_ref.protect.load` (codec, non-finite policy, unscaling, transform), so that the value
used to rank a flip is bit for bit the value the network computes with after the flip.

Math
----
First-order (Taylor) estimate of the change of the objective ``J`` when word ``i`` of tensor ``t`` has
bit ``b`` flipped (Rakin et al., "Bit-Flip Attack", ICCV 2019, eq. 4; here with the exact flipped value
of any codec rather than the 8-bit two's complement of the paper)::

    dJ_est[t, b, i] = dJ/dw_t[i] * (w_flip_t[b, i] - w_t[i])

A flip whose value is not finite (an IEEE exponent flip to inf or NaN) has ``dJ_est = +inf`` in an
untargeted attack (the network then computes NaN, the attacker's best outcome by the objective's
convention) and ``-inf`` in a targeted one; any other NaN estimate counts as ``-inf``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from saf_ref.protect.spec import StorageRule, StorageSpec
from saf_ref.protect.stored import StoredModel, StoredTensor, read

__all__ = ["Candidate", "FlipTable"]


class Candidate(NamedTuple):
    """One candidate flip: tensor position in the table, word (flat index), bit, and its estimate."""

    tensor: int
    index: int
    bit: int
    estimate: float


class _Entry:
    """One exposed tensor of a :class:`FlipTable`."""

    def __init__(self, name: str, template: StoredTensor, rule: StorageRule, bits: Sequence[int],
                 budget: int) -> None:
        self.name = name
        self.template = template
        self.rule = rule
        self.bits = np.asarray(bits, dtype=np.int64)  # allowed positions, ascending
        self.budget = budget
        self.used = 0
        self.codes = np.array(template.codes, copy=True).reshape(-1)  # private, writable
        self.masks = np.left_shift(np.ones(1, template.codes.dtype), self.bits.astype(template.codes.dtype))
        # valid[j, i]: bit bits[j] of word i may still be flipped
        self.valid = np.ones((self.bits.size, self.codes.size), dtype=bool)
        self.flipped_words = np.zeros(self.codes.size, dtype=bool)


class FlipTable:
    """Exact flipped values and validity of every candidate flip of the exposed tensors.

    Parameters
    ----------
    stored : StoredModel
        The clean stored model (its codes are copied; it is not modified).
    spec : StorageSpec
    rules : mapping str -> StorageRule
        The rule of every stored tensor.
    bits : mapping str -> sequence of int
        The allowed bit positions of each attacked tensor (ascending, each ``< nbits``); tensors not in
        it, or with no allowed bit, are not attacked.
    budgets : mapping str -> int
        At most this many flips in each attacked tensor.
    nonfinite : {"propagate", "zero"}
        The read path's non-finite policy.
    one_per_word : bool
        Once a word holds a flip, none of its other bits may flip (Hamming distance at most 1 per word).
    """

    def __init__(self, stored: StoredModel, spec: StorageSpec, rules: Mapping[str, StorageRule],
                 bits: Mapping[str, Sequence[int]], budgets: Mapping[str, int], nonfinite: str,
                 one_per_word: bool) -> None:
        self.spec = spec
        self.nonfinite = nonfinite
        self.one_per_word = one_per_word
        self.entries = [
            _Entry(name, stored[name], rules[name], bits[name], budgets[name])
            for name in stored.names if name in bits and len(bits[name]) and budgets[name] > 0
        ]
        self.w_flip = [self.read_codes(e, e.codes[None, :] ^ e.masks[:, None]) for e in self.entries]

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the attacked tensors, in stored order."""
        return tuple(e.name for e in self.entries)

    def read_codes(self, e: _Entry, codes: np.ndarray) -> np.ndarray:
        """The effective weights ``codes`` (any shape, words of tensor ``e``) read as."""
        t = e.template
        st = StoredTensor(codes, t.format, t.nbits, t.dtype, t.context, t.exposed)
        with np.errstate(all="ignore"):
            eff, _ = read(StoredModel({e.name: st}, self.spec), {e.name: e.rule}, self.nonfinite,
                          "bit_flip_attack")
        return eff[e.name]

    def estimates(self, grads: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray],
                  sign: float) -> list[np.ndarray]:
        """``dJ_est`` (module docstring), float64, shape ``(len(bits), size)`` per attacked tensor."""
        out = []
        for e, wf in zip(self.entries, self.w_flip, strict=True):
            g = grads[e.name].reshape(-1).astype(np.float64)
            w = weights[e.name].reshape(-1).astype(np.float64)
            with np.errstate(all="ignore"):
                est = g[None, :] * (wf.astype(np.float64) - w[None, :])
            est = np.where(np.isfinite(wf), est, sign * np.inf)
            out.append(np.where(np.isnan(est), -np.inf, est))
        return out

    def available(self) -> list[np.ndarray]:
        """Per attacked tensor, the mask of candidates that may still be flipped."""
        return [e.valid if e.used < e.budget else np.zeros_like(e.valid) for e in self.entries]

    def top(self, estimates: Sequence[np.ndarray], n: int) -> list[Candidate]:
        """The ``n`` available candidates of largest estimate; ties by (tensor, index, bit) ascending."""
        tid, idx, bit, score = [], [], [], []
        for t, (e, est, ok) in enumerate(zip(self.entries, estimates, self.available(), strict=True)):
            j, i = np.nonzero(ok)
            tid.append(np.full(i.size, t))
            idx.append(i)
            bit.append(e.bits[j])
            score.append(est[j, i])
        tid, idx, bit, score = (np.concatenate(a) for a in (tid, idx, bit, score))
        if score.size > n:
            # everything tied with the n-th largest stays in, so the tie-break below sees all of them
            keep = score >= np.partition(score, score.size - n)[score.size - n]
            tid, idx, bit, score = tid[keep], idx[keep], bit[keep], score[keep]
        order = np.lexsort((bit, idx, tid, -score))[:n]
        return [Candidate(int(tid[o]), int(idx[o]), int(bit[o]), float(score[o])) for o in order]

    def flipped_value(self, c: Candidate) -> np.generic:
        """The effective weight word ``c.index`` reads as with bit ``c.bit`` flipped."""
        e = self.entries[c.tensor]
        j = int(np.searchsorted(e.bits, c.bit))
        return self.w_flip[c.tensor][j, c.index]

    def commit(self, c: Candidate) -> None:
        """Flip the bit for good: update the codes, the flipped values of that word, the validity."""
        e = self.entries[c.tensor]
        j = int(np.searchsorted(e.bits, c.bit))
        e.codes[c.index] ^= e.masks[j]
        e.used += 1
        e.flipped_words[c.index] = True
        # flipping this bit again would undo the flip: never a candidate again
        e.valid[j, c.index] = False
        if self.one_per_word:
            e.valid[:, c.index] = False
        self.w_flip[c.tensor][:, c.index] = self.read_codes(e, e.codes[c.index] ^ e.masks)
