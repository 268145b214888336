"""A gradient-guided attack on the integer codes under a Hamming constraint (one flipped bit per word).

Where the progressive bit search (:mod:`saf_ref.attack.search`) commits one flip at a time and never
revisits it, this method keeps a *set* of ``k`` flips, at most one per stored word, and improves it:

1. linearize the objective at the clean weights and take the ``k`` words whose best single-bit flip has
   the largest first-order gain (the solution of the linearized problem: a one-shot gradient attack);
2. at the current set, linearize again and propose swaps (drop the flip whose removal costs least by
   first order, add the word whose best flip gains most), best pairs first; apply the first ``m`` pairs
   for ``m = n, n/2, ..., 1``, keeping the first move that raises the exact objective;
3. stop when no move raises it, or after ``iterations`` rounds.

Every flip is a bit of the *clean* word (one flip per word), so the value a flipped word reads as is
known exactly in advance (:class:`~saf_ref.attack.candidates.FlipTable`), and the objective never
decreases from one round to the next.

Math
----
At weights ``w`` (the clean ones with the set's words flipped) and ``g = dJ/dw``, with ``w0`` the clean
weights and ``w_flip[b, i]`` the value of clean word ``i`` with bit ``b`` flipped:

- adding word ``i`` (not in the set): ``a_i = max_b g_i (w_flip[b, i] - w_i)`` (non-finite values as in
  :mod:`~saf_ref.attack.candidates`);
- removing word ``i`` (in the set): ``r_i = g_i (w0_i - w_i)``;
- a swap ``(add i, remove j)`` is predicted to change ``J`` by ``a_i + r_j``; the ``n`` pairs matched in
  rank order with ``a_i + r_j > 0`` are proposed.

This is the linearize-and-project scheme of gradient attacks on quantized weights (Stutz et al.,
"Random and Adversarial Bit Error Robustness", TPAMI 2022, whose adversarial bit errors allow at most
one flip per weight), with the projection onto "at most ``k`` words, one bit each" solved exactly for
the linearized objective and accepted only when the exact objective improves.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from saf_ref.attack.candidates import Candidate, FlipTable
from saf_ref.attack.problem import AttackProblem, Evaluation

__all__ = ["GradientRound", "gradient_search"]


class GradientRound(NamedTuple):
    """One round of :func:`gradient_search`: the swaps applied (0: the initial set) and the objective."""

    round: int
    swaps: int
    objective: float


class _Word(NamedTuple):
    tensor: int
    index: int


def _weights(table: FlipTable, clean: dict, chosen: dict[_Word, int]) -> dict:
    """The clean weights with every chosen word read as its flipped value (a new dict)."""
    out = dict(clean)
    for t, e in enumerate(table.entries):
        mine = [(w.index, j) for w, j in chosen.items() if w.tensor == t]
        if mine:
            flat = np.array(clean[e.name], copy=True, order="C").reshape(-1)
            idx = np.array([i for i, _ in mine])
            flat[idx] = table.w_flip[t][[j for _, j in mine], idx]
            out[e.name] = flat.reshape(clean[e.name].shape)
    return out


def _gains(table: FlipTable, est: list[np.ndarray], grads: dict, weights: dict, clean: dict, sign: float,
           chosen: dict[_Word, int]):
    """Per attacked tensor: best add gain per word and its bit row, and the removal gain per word.

    ``est`` is :meth:`FlipTable.estimates` at ``weights``: ``g (w_flip - w)``, shape (bits, words).
    """
    adds, rows, removes = [], [], []
    for t, (e, a) in enumerate(zip(table.entries, est, strict=True)):
        a = np.where(e.valid, a, -np.inf)  # allowed bits only
        row = np.argmax(a, axis=0)  # the first (lowest) bit among equal gains
        best = a[row, np.arange(a.shape[1])]
        best[[w.index for w in chosen if w.tensor == t]] = -np.inf  # one flip per word: no second one
        adds.append(best)
        rows.append(row)
        g = grads[e.name].reshape(-1).astype(np.float64)
        w = weights[e.name].reshape(-1).astype(np.float64)
        w0 = clean[e.name].reshape(-1).astype(np.float64)
        with np.errstate(all="ignore"):
            r = g * (w0 - w)
        r = np.where(np.isfinite(w), r, -sign * np.inf)  # dropping an inf weight undoes a NaN network
        removes.append(np.where(np.isnan(r), -np.inf, r))
    return adds, rows, removes


def _ranked(scores: list[np.ndarray], words: list[_Word] | None) -> list[tuple[float, _Word]]:
    """``(score, word)`` sorted by score descending, ties by (tensor, index); all words or ``words``."""
    if words is None:
        tid = np.concatenate([np.full(a.size, t) for t, a in enumerate(scores)])
        idx = np.concatenate([np.arange(a.size) for a in scores])
    else:
        tid = np.array([w.tensor for w in words], dtype=np.int64)
        idx = np.array([w.index for w in words], dtype=np.int64)
    value = np.array([scores[t][i] for t, i in zip(tid, idx, strict=True)]) if words is not None else (
        np.concatenate(scores))
    order = np.lexsort((idx, tid, -value))
    return [(float(value[o]), _Word(int(tid[o]), int(idx[o]))) for o in order]


def _initial(table: FlipTable, adds, rows, k: int) -> dict[_Word, int]:
    """The ``k`` words of best first-order gain at the clean weights, within the per-tensor budgets."""
    used = [0] * len(table.entries)
    chosen: dict[_Word, int] = {}
    for _, w in _ranked(adds, None):
        if len(chosen) == k:
            break
        if used[w.tensor] < table.entries[w.tensor].budget:
            chosen[w] = int(rows[w.tensor][w.index])
            used[w.tensor] += 1
    return chosen


def _swaps(table: FlipTable, adds, rows, removes, chosen: dict[_Word, int]) -> list[tuple[_Word, int, _Word]]:
    """Swaps ``(add, bit row, remove)`` of positive predicted gain, best first, within the budgets."""
    used = [0] * len(table.entries)
    for w in chosen:
        used[w.tensor] += 1
    out_ranked = _ranked(removes, list(chosen))
    in_ranked = _ranked(adds, None)
    swaps, j = [], 0
    for a, w_in in in_ranked:
        if j == len(out_ranked):
            break
        r, w_out = out_ranked[j]
        if not a + r > 0:
            break
        if used[w_in.tensor] - (w_out.tensor == w_in.tensor) >= table.entries[w_in.tensor].budget:
            continue  # the add's tensor is full unless the removal frees a place in it
        used[w_in.tensor] += 1
        used[w_out.tensor] -= 1
        swaps.append((w_in, int(rows[w_in.tensor][w_in.index]), w_out))
        j += 1
    return swaps


def gradient_search(
    problem: AttackProblem, table: FlipTable, clean: dict[str, np.ndarray], k: int, iterations: int
) -> tuple[list[Candidate], list[GradientRound], Evaluation]:
    """Run the search of the module docstring from the clean weights (``table`` is never committed to).

    Returns
    -------
    flips : list of Candidate
        The final ``k`` flips, ordered by their first-order gain at the clean weights (largest first; the
        order in which the trajectory adds them), each with that gain as its estimate.
    rounds : list of GradientRound
        Round 0 (the one-shot linearized solution), then each accepted move.
    final : Evaluation
        The exact evaluation of the final set.
    """
    sign = problem.sign
    grads0 = problem.gradient(clean)
    est0 = table.estimates(grads0, clean, sign)
    adds0, rows0, _ = _gains(table, est0, grads0, clean, clean, sign, {})
    chosen = _initial(table, adds0, rows0, k)
    best = problem.evaluate(_weights(table, clean, chosen))
    rounds = [GradientRound(0, 0, best.objective)]
    for it in range(1, iterations + 1):
        weights = _weights(table, clean, chosen)
        grads = problem.gradient(weights)
        est = table.estimates(grads, weights, sign)
        adds, rows, removes = _gains(table, est, grads, weights, clean, sign, chosen)
        swaps = _swaps(table, adds, rows, removes, chosen)
        m = len(swaps)
        while m >= 1:  # the largest move first, then halve it until the exact objective improves
            trial = dict(chosen)
            for w_in, row, w_out in swaps[:m]:
                del trial[w_out]
                trial[w_in] = row
            ev = problem.evaluate(_weights(table, clean, trial))
            if ev.objective > best.objective:
                chosen, best = trial, ev
                rounds.append(GradientRound(it, m, ev.objective))
                break
            m //= 2
        if m == 0:
            break
    scores = [np.zeros(e.codes.size) for e in table.entries]
    for w, row in chosen.items():
        scores[w.tensor][w.index] = est0[w.tensor][row, w.index]
    flips = [Candidate(w.tensor, w.index, int(table.entries[w.tensor].bits[chosen[w]]), s)
             for s, w in _ranked(scores, list(chosen))]
    return flips, rounds, best
