"""Fault models for stored words: random bit errors, exact counts, targeted flips, stuck-at maps, bursts.

Every function here works on *codes*: an unsigned integer array (uint8/16/32/64) whose elements are
``nbits``-bit stored words, bit 0 the least significant bit, always. Formats turn values into codes and
back (``saf_ref.bits.ieee``, ``saf_ref.bits.fixed``); this module knows nothing of them.

All functions are pure: they return new arrays and never write into their inputs. Randomness comes only
from the keyword ``rng`` (a ``numpy.random.Generator`` or a non-negative integer seed).

Return types: every ``inject_*`` function returns the new codes, only. The fault models of
:mod:`saf_ref.bits.faultmodels` (``BitErrors``, ``ExactCount``, ``Bursts``, ``StuckAt``, ``Replay``) make
the same draws through the same cores (``draw_bit_errors``, ``draw_exact_k``, ``draw_bursts``) and return
``(codes, FaultList)``: use them when the record of what was done is wanted.

The samplers work in time proportional to the number of faults, not the number of bits: at a bit-error
rate ``p`` over ``N`` candidate bits the flips have the law of ``K ~ Binomial(N, p)`` distinct uniform
positions, drawn here as geometric gaps between flips (:func:`bernoulli_positions`), so 11.7 million
float32 words at ``p = 1e-5`` (about 3,700 flips among 374 million bits) cost about one copy of the array
(``benchmarks/bench_inject.py``).

A *bit position* of an array with ``m`` candidate bits per word (all ``nbits``, or those of ``bit_mask``)
is ``pos = element * m + slot``, with ``element`` the flat C-order index and ``slot`` the rank of the bit
among the candidates; positions are returned sorted, so faults come out ordered by (element, bit).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from saf_ref import validation
from saf_ref.bits.faultlist import (
    FaultList,
    check_codes,
    default_format_name,
    resolve_nbits,
)
from saf_ref.bits.fields import BitField, smallest_container


class FlipPositions(NamedTuple):
    """Bit positions to flip: parallel arrays, sorted by (index, bit), no duplicates.

    Attributes
    ----------
    index : ndarray of int64, shape (K,)
        Flat (C-order) element indices.
    bit : ndarray of uint8, shape (K,)
        Bit indices, LSB = 0.
    """

    index: np.ndarray
    bit: np.ndarray


# ---------------------------------------------------------------------------------------------------------
# Argument helpers
# ---------------------------------------------------------------------------------------------------------
def bit_indices(spec: Any, nbits: int, fn: str, name: str = "bit_mask") -> np.ndarray:
    """The set of bits named by ``spec``, as sorted int64 indices in ``[0, nbits)``.

    ``spec`` is ``None`` (every bit), an integer mask (bit ``b`` set = bit ``b`` selected), a
    :class:`BitField` (e.g. ``fmt.fields["exponent"]``), a boolean array of shape ``(nbits,)``, or an
    iterable of bit indices and BitFields (their union).
    """
    if spec is None:
        return np.arange(nbits, dtype=np.int64)
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, (bool, np.bool_)):
        spec = int(spec)
        if spec < 0 or spec >> nbits:
            raise ValueError(f"{fn}: {name} must be an integer mask in [0, 2**{nbits}), got {spec:#x}")
        return np.array([b for b in range(nbits) if spec >> b & 1], dtype=np.int64)
    if isinstance(spec, np.ndarray) and spec.dtype == np.bool_:
        validation.check_shape(spec, name, fn, (nbits,))
        return np.flatnonzero(spec).astype(np.int64)
    items = [spec] if isinstance(spec, BitField) else spec
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise TypeError(
            f"{fn}: {name} must be None, an int mask, a BitField, a bool array or an iterable of bit "
            f"indices, got {validation.describe(spec)}"
        )
    bits: set[int] = set()
    for item in items:
        if isinstance(item, BitField):
            if item.msb >= nbits:
                raise ValueError(
                    f"{fn}: {name} field {item.name!r} (bits {item.lsb}..{item.msb}) exceeds nbits={nbits}"
                )
            bits.update(item.bits())
        else:
            bits.add(validation.check_int(item, f"{name} entry", fn, low=0, high=nbits - 1))
    return np.array(sorted(bits), dtype=np.int64)


def field_mask(fmt: Any, *names: str) -> int:
    """Integer bit mask of the named fields of a format object (``fmt.fields``), e.g. for ``bit_mask``.

    ``field_mask(get_ieee_format("float16"), "exponent") == 0x7C00``.
    """
    fields = getattr(fmt, "fields", None)
    if not isinstance(fields, dict):
        raise TypeError(f"field_mask: fmt must have a dict attribute 'fields'"
            f", got {validation.describe(fmt)}")
    mask = 0
    for n in names:
        validation.check_choice(n, "field name", "field_mask", tuple(fields))
        mask |= fields[n].mask
    return mask


def _check_shape_arg(shape: Any, fn: str) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"{fn}: shape must be a tuple of ints, got {validation.describe(shape)}")
    return tuple(validation.check_int(s, f"shape[{i}]", fn, low=0) for i, s in enumerate(shape))


def _check_format_nbits(nbits: Any, fn: str) -> int:
    return validation.check_int(nbits, "nbits", fn, low=1, high=64)


# ---------------------------------------------------------------------------------------------------------
# Sampling primitives
# ---------------------------------------------------------------------------------------------------------
def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values (``np.unique`` without its hash-table path, which is slow for int64 here)."""
    a = np.sort(a)
    if a.size == 0:
        return a
    return a[np.concatenate(([True], a[1:] != a[:-1]))]


def distinct_uniform(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct integers drawn uniformly from ``[0, n)``, returned sorted (int64).

    Math
    ----
    Draw ``k`` integers with replacement, drop duplicates, draw as many more as are missing, and repeat.
    The result is the set of the first ``k`` distinct values of an i.i.d. uniform stream, which by
    symmetry (any permutation of ``[0, n)`` maps the stream to an equally likely one) is a uniformly
    random ``k``-subset. For ``k <= n / 2`` fewer than a quarter of the draws repeat, so the expected work
    is ``O(k log k)`` (the sort) however large ``n`` is. For ``k > n / 2`` the complement (``n - k`` drawn
    positions) is sampled instead, with an ``O(n) = O(k)`` boolean mask.
    """
    if k > n // 2:
        mask = np.ones(n, dtype=bool)
        mask[distinct_uniform(n, n - k, rng)] = False
        return np.flatnonzero(mask).astype(np.int64)
    pos = np.zeros(0, dtype=np.int64)
    while pos.size < k:
        pos = _sorted_unique(np.concatenate((pos, rng.integers(0, n, size=k - pos.size, dtype=np.int64))))
    return pos


_MAX_DRAWS = 1 << 22  # exponential draws per round of bernoulli_positions (see its Math section)
_CHUNK = 1 << 16  # draws processed at a time: the working arrays (512 KiB each) stay in the L2 cache


def bernoulli_chunks(n: int, p: float, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The positions of :func:`bernoulli_positions`, in order, as consecutive sorted chunks.

    Each chunk is an int64 array of at most ``2**16`` positions, every one above those of the chunk
    before. The chunks are *views of one reused buffer*: a chunk is valid until the next one is
    requested (copy it to keep it). The draws from ``rng`` are exactly those of
    :func:`bernoulli_positions` (which is built on this generator), so the positions are the same.

    Math
    ----
    The gap before the next success, ``G`` (failures first), is geometric: ``P(G >= j) = (1 - p)^j``.
    With ``E ~ Exp(1)`` and ``lam = -log(1 - p)``, ``G = floor(E / lam)`` has exactly that law, since
    ``P(floor(E / lam) >= j) = P(E >= j * lam) = exp(-j * lam) = (1 - p)^j``. Successes are at
    ``pos_1 = G_1`` and ``pos_{i+1} = pos_i + 1 + G_{i+1}``, so they come out sorted and distinct with no
    sort and no duplicate removal; their count is ``Binomial(n, p)``.

    Draws come in *rounds*: a round draws ``m = min(mu + 6 sqrt(mu) + 16, 2**22)`` exponentials, with
    ``mu = (n - start) p`` the expected number of successes left, which finishes the process with
    overwhelming probability; if it does not, another round starts after its last position. A round is
    processed in chunks of ``2**16`` draws (``Generator.standard_exponential`` fills an array one value
    after the other, so drawing ``m`` values in chunks gives the same values as drawing them at once),
    and the draws of a round that fall beyond ``n`` are still made, so the generator ends in the same
    state whatever the chunking.

    Exactness of the integer steps: each gap is clipped at ``n`` before conversion (a gap ``>= n``
    ends the process anyway), which keeps the int64 sums far from overflow for ``n`` up to about
    ``2**40`` bits; ``floor`` is done by the conversion itself, since ``trunc(x) = floor(x)`` for
    ``x >= 0`` and ``floor(min(x, n)) = min(floor(x), n)`` for an integer ``n``.
    """
    if p == 0.0 or n == 0:
        return
    if p == 1.0:  # every position, no draws
        for a in range(0, n, _CHUNK):
            yield np.arange(a, min(a + _CHUNK, n), dtype=np.int64)
        return
    lam = -np.log1p(-p)
    size = min(_CHUNK, _MAX_DRAWS)
    gaps = np.empty(size)  # the two working buffers, reused by every chunk
    pos = np.empty(size, dtype=np.int64)
    last = -1  # the last position decided so far (a success, or past n)
    while last + 1 < n:
        expect = (n - last - 1) * p
        todo = min(int(expect + 6.0 * np.sqrt(expect) + 16), _MAX_DRAWS)  # draws of this round
        while todo:
            c = min(todo, size)
            todo -= c
            g, q = gaps[:c], pos[:c]
            rng.standard_exponential(out=g)
            with np.errstate(over="ignore"):  # a tiny p (lam < 1e-307) makes E / lam inf: clipped to n
                g /= lam
            np.minimum(g, n, out=g)
            q[...] = g  # float -> int64 truncates: the floor of the (non-negative) gap
            q += 1
            q[0] += last  # carry the previous position into the running sum
            np.cumsum(q, out=q)  # q[i] = last + sum_{j <= i} (G_j + 1)
            last = int(q[-1])
            if last < n:
                yield q
                continue
            end = int(np.searchsorted(q, n))  # q is increasing: keep the positions below n
            if end:
                yield q[:end]
            while todo:  # the rest of the round's draws, made only to leave rng in the same state
                c = min(todo, size)
                todo -= c
                rng.standard_exponential(out=gaps[:c])


def bernoulli_positions(n: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of an i.i.d. Bernoulli(p) process over ``[0, n)``, in time O(expected count).

    Math
    ----
    Geometric gaps between successes, one exponential draw per success (plus a few spare): see
    :func:`bernoulli_chunks`, which this concatenates. Positions come out sorted and distinct; their
    count is ``Binomial(n, p)``. The cost is independent of ``n``. (The other classic method, ``K ~
    Binomial(n, p)`` then ``K`` distinct uniform positions as in :func:`distinct_uniform`, has the same
    law but needs an ``O(K log K)`` sort and duplicate removal; it measured several times slower at
    ``p = 0.1``.) Positions are int64: ``n`` up to about ``2**40`` bits keeps every partial sum far from
    overflow.
    """
    chunks = [c.copy() for c in bernoulli_chunks(n, p, rng)]  # copies: the chunks share one buffer
    if not chunks:
        return np.zeros(0, dtype=np.int64)
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def positions_to_flips(pos: np.ndarray, bits: np.ndarray) -> FlipPositions:
    """Split bit positions ``element * m + slot`` into (element index, bit) with ``bits[slot]``."""
    if bits.size == 0:
        return FlipPositions(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint8))
    index, slot = np.divmod(pos, bits.size)
    if bits[-1] - bits[0] == bits.size - 1:  # contiguous candidate bits: skip the table lookup
        return FlipPositions(index, (slot + bits[0]).astype(np.uint8))
    return FlipPositions(index, bits[slot].astype(np.uint8))


def _flip_rate_sampler(
    codes: np.ndarray, rng: Any, nbits: Any, bit_mask: Any, fn: str
) -> tuple[np.ndarray, int, np.ndarray, np.random.Generator]:
    """Shared validation of the random samplers: (codes, nbits, candidate bits, rng)."""
    check_codes(codes, fn)
    nbits = resolve_nbits(codes, nbits, fn)
    bits = bit_indices(bit_mask, nbits, fn)
    rng = validation.check_rng(rng, fn)
    return codes, nbits, bits, rng


def apply_flips(codes: np.ndarray, flips: FlipPositions, *, nbits: int | None = None) -> np.ndarray:
    """XOR the given bit positions into a copy of ``codes``.

    No PyTorch equivalent; in PyTorch: ``w.view(-1)[index] ^= (1 << bit)`` on an integer view.

    Parameters
    ----------
    codes : ndarray of uint8/16/32/64, any shape
    flips : FlipPositions
        ``index`` (flat C-order) and ``bit`` arrays of equal length, as returned by the samplers.
    nbits : int or None
        Bits per word (default: container width); every ``bit`` must be below it.

    Returns
    -------
    ndarray, same shape and dtype as ``codes``

    Math
    ----
    ``out[i] = codes[i] XOR sum_{k : index[k] = i} 2^bit[k]`` (a position listed twice cancels).
    """
    fn = "apply_flips"
    check_codes(codes, fn)
    nbits = resolve_nbits(codes, nbits, fn)
    if not isinstance(flips, tuple) or len(flips) != 2:
        raise TypeError(f"{fn}: flips must be a FlipPositions (index, bit), got {validation.describe(flips)}")
    index = np.asarray(flips[0])
    bit = np.asarray(flips[1])
    for name, a in (("index", index), ("bit", bit)):  # a float 1.7 would be truncated to 1 silently
        if a.size and a.dtype.kind not in "iu":
            raise TypeError(f"{fn}: flips.{name} must hold integers, got dtype {a.dtype}")
    if index.shape != bit.shape or index.ndim != 1:
        raise ValueError(
            f"{fn}: flips.index and flips.bit must be 1-d of equal length, got {index.shape}, {bit.shape}"
        )
    if index.size and (index.min() < 0 or index.max() >= codes.size):
        raise ValueError(
            f"{fn}: flips.index must be in [0, codes.size={codes.size}), got [{index.min()}, {index.max()}]"
        )
    if bit.size and (bit.min() < 0 or bit.max() >= nbits):
        raise ValueError(f"{fn}: flips.bit must be in [0, nbits={nbits}), got [{bit.min()}, {bit.max()}]")
    return xor_flips(codes, FlipPositions(index.astype(np.int64), bit))


def xor_flips(codes: np.ndarray, flips: FlipPositions) -> np.ndarray:
    """:func:`apply_flips` without the checks, for positions the samplers produced (valid by construction)."""
    out = np.array(codes, order="C", copy=True)
    masks = np.left_shift(codes.dtype.type(1), flips.bit.astype(codes.dtype))
    index = flips.index
    if index.size > 1 and bool(np.all(index[1:] >= index[:-1])):  # sorted, as every sampler returns them
        xor_sorted(out.reshape(-1), index, masks)
    else:  # ufunc.at handles an element listed several times (`flat[index] ^= masks` would keep one)
        np.bitwise_xor.at(out.reshape(-1), index, masks)
    return out


def xor_sorted(flat: np.ndarray, index: np.ndarray, masks: np.ndarray) -> None:
    """``flat[index[k]] ^= masks[k]`` for every ``k``, in place, for a non-decreasing ``index``.

    ``masks`` may be overwritten. Same result as ``np.bitwise_xor.at(flat, index, masks)``, which
    handles repeated indices too but costs about 6 ns an entry, against 2 ns for fancy indexing.
    """
    if merge_runs(index, masks):
        flat[index] ^= masks  # all the writes to one word store the same value (see merge_runs)
    else:
        np.bitwise_xor.at(flat, index, masks)


_DENSE_RUNS = 8  # merge_runs declines when more than 1 entry in this many continues a run


def merge_runs(index: np.ndarray, masks: np.ndarray) -> bool:
    """Give every entry of a run of equal ``index`` values the XOR of the run's ``masks`` (in place).

    Returns True when done, False (``masks`` untouched) when more than one entry in 8 continues a
    run: there ``np.bitwise_xor.at`` is faster than the merge and the fancy indexing together (at
    ``p = 0.1`` in 32-bit words, 70% of the entries continue a run: 1.0 ms against 0.4 ms a chunk).

    Math
    ----
    Fancy indexing ``flat[index] ^= masks`` reads every ``flat[index[k]]``, XORs, then writes them
    back; an index listed twice is written twice, and NumPy does not promise which write wins. With
    ``index`` sorted, the entries of one word form a run ``h, h + 1, ..., h + L - 1``; once every entry
    of the run holds ``M = masks[h] ^ ... ^ masks[h + L - 1]``, each of its ``L`` writes stores the same
    ``flat[i] ^ M`` and the order of the writes no longer matters. Runs are rare at small rates (at
    ``p = 1e-3`` about 3% of the flips in 32-bit words share their word with the flip before), so the
    merge works on those entries only.
    """
    cont = np.flatnonzero(index[1:] == index[:-1]) + 1  # entries that continue a run (not its head)
    if cont.size * _DENSE_RUNS > index.size:
        return False
    if cont.size:
        # the head of each continuing entry: consecutive entries of `cont` belong to one run, whose
        # head is just before the first of them (a head is never in `cont`, so runs never look joined)
        first = np.diff(cont, prepend=-1) != 1
        head = np.maximum.accumulate(np.where(first, cont - 1, 0))
        np.bitwise_xor.at(masks, head, masks[cont])  # the head's mask becomes the run's XOR ...
        masks[cont] = masks[head]  # ... and so does every other entry's
    return True


def _word_masks(
    pos: np.ndarray, bits: np.ndarray, dtype: np.dtype, index_buf: np.ndarray, mask_buf: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Flat element indices and XOR masks (``2**bit`` in ``dtype``) of sorted bit positions.

    The same as :func:`positions_to_flips` followed by the masks of :func:`xor_flips`, written into the
    first ``pos.size`` entries of the given buffers (int64 and ``dtype``), which are returned. When the
    candidate bits are a contiguous run of ``m = 2**s`` bits (all the bits of an 8/16/32/64-bit word),
    the division by ``m`` is a shift and the remainder a bit-and (``pos = index * 2**s + slot``).
    """
    m = bits.size
    index, masks = index_buf[: pos.size], mask_buf[: pos.size]
    if bits[-1] - bits[0] == m - 1 and m & (m - 1) == 0:
        np.right_shift(pos, m.bit_length() - 1, out=index)
        np.bitwise_and(pos, m - 1, out=masks, casting="unsafe")  # the slot, cast to the word dtype at once
        if bits[0]:
            masks += dtype.type(bits[0])
    else:
        flips = positions_to_flips(pos, bits)
        index[...] = flips.index
        masks[...] = flips.bit
    np.left_shift(dtype.type(1), masks, out=masks)  # bit -> 2**bit, in place
    return index, masks


_BLOCK_BYTES = 1 << 17  # inject_chunked copies and flips at least this much at a time ...
_BLOCK_FLIPS = 2048  # ... and enough words to hold about this many flips (for small rates)


def inject_chunked(codes: np.ndarray, bits: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """``xor_flips(codes, draw_bit_errors(codes, bits, p, p, rng))`` in one pass; unchecked core.

    The same draws and the same result (``tests/bits/test_faults_fast.py`` compares them with the code
    before this function existed), faster: at ``p = 1e-3`` on 11.7 million float32 words the old path
    took 2.7-2.9 times one copy of the array on a loaded 2-core machine, this one 1.8-2.0 times (1.6-1.7
    with the benchmark at real-time priority; ``benchmarks/bench_inject.py`` and its README section).
    Where the time went, and what changed:

    - Positions are handled chunk by chunk as :func:`bernoulli_chunks` yields them (64 Ki draws at a
      time, in reused buffers): no array of all the positions, element indices and masks is built, and
      the working arrays stay in the cache.
    - ``np.bitwise_xor.at`` (about 6 ns an entry) is replaced by fancy indexing (about 2 ns), after
      :func:`merge_runs` has made the repeated indices harmless (except at high rates, where most
      flips share their word with another and ``ufunc.at`` is the faster of the two).
    - The copy of ``codes`` is made block by block (128 KiB, or more where flips are sparse), each
      block's flips right after its copy. Flipping after one copy of the whole array reads each hit
      word back from memory (a large copy does not leave its destination in the cache), which cost as
      much as the copy itself. Blocks hold at least about 2048 flips, since copying in small pieces is
      a little slower than one large copy and only pays off when there are flips to land.
    """
    src = codes.reshape(-1)  # a view for a C-contiguous array, else a C-order copy
    out = np.empty(codes.shape, dtype=codes.dtype)
    flat = out.reshape(-1)
    flips_per_word = p * bits.size
    words_per_flip = 1.0 / flips_per_word if flips_per_word > 0 else float(codes.size)
    # At most the whole array (a larger block copies the same): for p * m below ~1e-305 the product is
    # inf, which int() refuses (OverflowError), and 1 / (p * m) itself is inf for a subnormal p * m.
    block = max(_BLOCK_BYTES // codes.itemsize, int(min(_BLOCK_FLIPS * words_per_flip, codes.size)), 1)
    done = 0  # flat[:done] holds its copy of src, and its flips so far
    n = codes.size * bits.size
    index_buf = np.empty(min(_CHUNK, n), dtype=np.int64)  # reused by every chunk (so it stays in cache)
    mask_buf = np.empty(index_buf.size, dtype=codes.dtype)
    for pos in bernoulli_chunks(n, p, rng):
        index, masks = _word_masks(pos, bits, codes.dtype, index_buf, mask_buf)
        merged = merge_runs(index, masks)  # (a word hit again in the next chunk is XORed there again)
        end = int(index[-1]) + 1  # this chunk's flips are in words below `end` (and end >= done)
        stops = [*range(done + block, end, block), end]  # copy flat[done:end] in blocks ...
        cuts = [0, *np.searchsorted(index, stops[:-1]).tolist(), index.size]  # ... index[cuts[i]:] in block i
        for stop, lo, hi in zip(stops, cuts[:-1], cuts[1:], strict=True):
            flat[done:stop] = src[done:stop]
            done = stop
            if hi > lo and merged:
                hit = index[lo:hi]
                flat[hit] ^= masks[lo:hi]
            elif hi > lo:  # dense runs (high rates): ufunc.at copes with the repeated indices
                np.bitwise_xor.at(flat, index[lo:hi], masks[lo:hi])
    flat[done:] = src[done:]
    return out


def check_tensor_name(tensor: Any, fn: str) -> str:
    """A tensor name for fault records: a str (``""`` for one anonymous array)."""
    if not isinstance(tensor, str):
        raise TypeError(f"{fn}: tensor must be a str, got {validation.describe(tensor)}")
    return tensor


# ---------------------------------------------------------------------------------------------------------
# Unchecked cores: the draws themselves. Callers validate (the inject_* functions below, and the fault
# models of saf_ref.bits.faultmodels); the random draws happen here only, so both give the same bits.
# ---------------------------------------------------------------------------------------------------------
def draw_bit_errors(
    codes: np.ndarray, bits: np.ndarray, p01: float, p10: float, rng: np.random.Generator
) -> FlipPositions:
    """Flip positions of independent bit errors (see :func:`inject_bit_errors`); unchecked core."""
    pmax = max(p01, p10)
    flips = positions_to_flips(bernoulli_positions(codes.size * bits.size, pmax, rng), bits)
    if p01 != p10 and flips.index.size:
        # thinning: the candidate's current bit value decides which rate applies
        stored = (codes.reshape(-1)[flips.index] >> flips.bit.astype(codes.dtype)) & codes.dtype.type(1)
        keep_prob = np.where(stored == 1, p10 / pmax, p01 / pmax)
        keep = rng.random(flips.index.size) < keep_prob
        flips = FlipPositions(flips.index[keep], flips.bit[keep])
    return flips


def draw_exact_k(size: int, bits: np.ndarray, k: int, rng: np.random.Generator) -> FlipPositions:
    """Flip positions of exactly ``k`` distinct candidate bits (:func:`inject_exact_k`); unchecked core."""
    return positions_to_flips(distinct_uniform(size * bits.size, k, rng), bits)


def draw_bursts(
    size: int, nbits: int, rate: float, burst_len: int, rng: np.random.Generator
) -> FlipPositions:
    """Flip positions of bursts (see :func:`inject_bursts`); unchecked core."""
    words = bernoulli_positions(size, rate, rng)
    start = rng.integers(0, nbits - burst_len + 1, size=words.size)
    # one record per flipped bit: word w gets bits start[w] .. start[w] + burst_len - 1 (sorted by bit)
    index = np.repeat(words, burst_len)
    bit = (np.repeat(start, burst_len) + np.tile(np.arange(burst_len), words.size)).astype(np.uint8)
    return FlipPositions(index, bit)


def check_rates(p: Any, p01: Any, p10: Any, fn: str) -> tuple[float, float]:
    """The rates ``(p01, p10)`` of :func:`inject_bit_errors` from its ``p``, ``p01``, ``p10`` arguments."""
    if p is None and p01 is None and p10 is None:
        raise ValueError(f"{fn}: p must be given (or p01 and/or p10), got p=None, p01=None, p10=None")
    default = 0.0 if p is None else validation.check_probability(p, "p", fn)
    r01 = default if p01 is None else validation.check_probability(p01, "p01", fn)
    r10 = default if p10 is None else validation.check_probability(p10, "p10", fn)
    return r01, r10


# ---------------------------------------------------------------------------------------------------------
# 1. Independent random bit errors
# ---------------------------------------------------------------------------------------------------------
def inject_bit_errors(
    codes: np.ndarray,
    p: float | None = None,
    *,
    rng: np.random.Generator | int,
    nbits: int | None = None,
    bit_mask: Any = None,
    p01: float | None = None,
    p10: float | None = None,
) -> np.ndarray:
    """Independent random bit errors: each stored bit flips with probability ``p``.

    No PyTorch equivalent (fault injection); RandBET-style training calls this once per step.

    Parameters
    ----------
    codes : ndarray of uint8/16/32/64, any shape
        Stored words.
    p : float in [0, 1] or None
        Bit-error rate, for both directions unless ``p01`` / ``p10`` override one.
    rng : numpy.random.Generator or int
        Source of randomness (an int is a seed).
    nbits : int or None
        Bits per word (default: the container width). Bits at or above ``nbits`` never flip.
    bit_mask : None, int, BitField, bool array (nbits,), or iterable of bit indices / BitFields
        Only these bits may flip (default: all ``nbits``), e.g. ``fmt.fields["exponent"]``.
    p01, p10 : float in [0, 1] or None
        Asymmetric rates: ``p01`` is the probability that a stored 0 becomes 1, ``p10`` that a stored
        1 becomes 0. A rate not given defaults to ``p``, or to 0 when ``p`` is not given either.

    Returns
    -------
    out : ndarray, same shape and dtype as ``codes``
        Always the new codes only. For the record of what was flipped use the fault model
        :class:`saf_ref.bits.faultmodels.BitErrors`: ``BitErrors(p).apply(codes, rng=rng)`` returns
        ``(out, FaultList)`` with the same draws, hence the same ``out``.

    Math
    ----
    Over the ``N = codes.size * m`` candidate bits (``m`` bits per word), each bit flips independently:
    ``P(flip) = p01`` if the stored bit is 0 and ``p10`` if it is 1; the number of flips is
    ``Binomial(N, p)`` for symmetric rates. Sampling: with ``p* = max(p01, p10)``, draw the candidates of
    a Bernoulli(``p*``) process over the ``N`` bits from geometric gaps (time ``O(N p*)``, not ``O(N)``;
    see :func:`bernoulli_positions`), then keep each candidate with probability ``p_b / p*`` where
    ``b`` is its stored bit (thinning: kept with probability ``p* * p_b / p* = p_b``, independently).
    When ``p01 == p10`` no thinning is done.
    """
    fn = "inject_bit_errors"
    codes, nbits, bits, rng = _flip_rate_sampler(codes, rng, nbits, bit_mask, fn)
    r01, r10 = check_rates(p, p01, p10, fn)
    if r01 == r10:  # symmetric: no thinning, so the flips can be made while they are drawn
        return inject_chunked(codes, bits, r01, rng)
    return xor_flips(codes, draw_bit_errors(codes, bits, r01, r10, rng))


# ---------------------------------------------------------------------------------------------------------
# 2. Flips from a caller's uniform array (interop with backends drawing their own random numbers)
# ---------------------------------------------------------------------------------------------------------
def flip_by_uniform(codes: np.ndarray, uniform: np.ndarray, p: float, *, protected: Any = None) -> np.ndarray:
    """Flip bit ``j`` of element ``k`` iff ``uniform[k, j] < p`` (float32, strict).

    The interop mode of the bit-error-robustness reference code (Stutz et al.): a backend draws one
    uniform number per stored bit itself (``torch.rand(codes.shape + (nbits,))``) and both sides flip the
    same bits. No PyTorch equivalent as one call.

    Parameters
    ----------
    codes : ndarray of uint8/16/32/64, shape S
        Stored words.
    uniform : ndarray of float32, shape S + (nbits,)
        One uniform number per bit, bit ``j`` LSB first; ``nbits = uniform.shape[-1]`` must not exceed
        the container width.
    p : float in [0, 1]
        Bit-error rate; cast to float32 once (``np.float32(p)``) before the comparison.
    protected : None, int mask, bool array (nbits,), BitField or iterable of bit indices
        Bits that never flip.

    Returns
    -------
    ndarray, shape S, dtype of ``codes``

    Math
    ----
    ``out[k] = codes[k] XOR sum_j [uniform[k, j] < float32(p) and j not protected] 2^j``.

    Notes
    -----
    The comparison is done in float32 like the reference implementation, so ``uniform`` must be float32
    (a float64 array is a TypeError rather than a silent cast). Nesting: with one ``uniform`` array and
    ``p1 < p2``, ``float32(p1) <= float32(p2)``, so the bits flipped at ``p1`` are a subset of those
    flipped at ``p2``.
    """
    fn = "flip_by_uniform"
    check_codes(codes, fn)
    validation.check_ndarray(uniform, "uniform", fn)
    if uniform.dtype != np.float32:
        raise TypeError(
            f"{fn}: uniform must have dtype float32 (the comparison is in float32; cast with "
            f".astype(np.float32)), got {uniform.dtype}"
        )
    if uniform.ndim != codes.ndim + 1 or uniform.shape[:-1] != codes.shape:
        raise ValueError(
            f"{fn}: uniform must have shape codes.shape + (nbits,) = {codes.shape} + (nbits,), "
            f"got {uniform.shape}"
        )
    nbits = uniform.shape[-1]
    width = codes.dtype.itemsize * 8
    if not 1 <= nbits <= width:
        raise ValueError(
            f"{fn}: uniform.shape[-1] (=nbits) must be in [1, {width}] for {codes.dtype} codes, got {nbits}"
        )
    p32 = np.float32(validation.check_probability(p, "p", fn))
    flips = uniform < p32  # a new array; uniform is not touched
    if protected is not None:  # (None means "every bit" to bit_indices, "no bit" here)
        flips[..., bit_indices(protected, nbits, fn, "protected")] = False
    weights = np.left_shift(codes.dtype.type(1), np.arange(nbits, dtype=codes.dtype))  # 2^j, LSB first
    masks = np.bitwise_or.reduce(np.where(flips, weights, codes.dtype.type(0)), axis=-1)
    return np.asarray(codes ^ masks.astype(codes.dtype))  # 0-d stays an array


# ---------------------------------------------------------------------------------------------------------
# 3. Exact counts, targeted flips, stuck-at maps, bursts
# ---------------------------------------------------------------------------------------------------------
def inject_exact_k(
    codes: np.ndarray,
    k: int,
    *,
    rng: np.random.Generator | int,
    nbits: int | None = None,
    bit_mask: Any = None,
) -> np.ndarray:
    """Flip exactly ``k`` distinct bits, chosen uniformly among all candidate bits.

    No PyTorch equivalent. Useful for "k bit errors" experiments with no variance in the count.

    Parameters
    ----------
    codes : ndarray of uint8/16/32/64, any shape
    k : int in [0, codes.size * m]
        Number of flips (``m`` = candidate bits per word).
    rng, nbits, bit_mask
        As in :func:`inject_bit_errors`.

    Returns
    -------
    out : ndarray, same shape and dtype as ``codes``
        The new codes only; :class:`saf_ref.bits.faultmodels.ExactCount` returns them with their FaultList.

    Math
    ----
    The flipped set is a uniformly random ``k``-subset of the ``N`` candidate bits: each of the
    ``C(N, k)`` subsets has probability ``1 / C(N, k)``; each bit flips with probability ``k / N``.
    """
    fn = "inject_exact_k"
    codes, nbits, bits, rng = _flip_rate_sampler(codes, rng, nbits, bit_mask, fn)
    k = validation.check_int(k, "k", fn, low=0, high=codes.size * bits.size)
    return xor_flips(codes, draw_exact_k(codes.size, bits, k, rng))


def flip_bit(
    codes: np.ndarray, index: int | tuple[int, ...], bit: int, *, nbits: int | None = None
) -> np.ndarray:
    """Flip one bit of one element; return a new array.

    PyTorch: ``w.view(torch.int32)[index] ^= 1 << bit`` (in place there; a copy here).

    Parameters
    ----------
    codes : ndarray of uint8/16/32/64, any shape
    index : int or tuple of int
        Flat C-order index in ``[0, codes.size)``, or a multi-index with one entry per dimension
        (each in ``[0, codes.shape[d])``; negative indices are rejected).
    bit : int in [0, nbits)
        Bit to flip, LSB = 0.
    nbits : int or None
        Bits per word (default: container width).

    Math
    ----
    ``out[index] = codes[index] XOR 2^bit``; every other element is unchanged.
    """
    fn = "flip_bit"
    check_codes(codes, fn)
    nbits = resolve_nbits(codes, nbits, fn)
    bit = validation.check_int(bit, "bit", fn, low=0, high=nbits - 1)
    if isinstance(index, tuple):
        validation.check_equal(fn, "len(index)", len(index), "codes.ndim", codes.ndim)
        multi = tuple(
            validation.check_int(i, f"index[{d}]", fn, low=0, high=codes.shape[d] - 1)
            for d, i in enumerate(index)
        )
        flat = int(np.ravel_multi_index(multi, codes.shape)) if codes.ndim else 0
    else:
        flat = validation.check_int(index, "index", fn, low=0, high=codes.size - 1)
    return xor_flips(codes, FlipPositions(np.array([flat], dtype=np.int64), np.array([bit])))


@dataclass(frozen=True, eq=False)
class StuckAtMap:
    """A persistent map of stuck bits (a "chip"): sampled once, applied to every write.

    Attributes
    ----------
    and_mask : ndarray of uint8/16/32/64, shape S
        0 at the stuck-at-0 bits, 1 elsewhere.
    or_mask : ndarray, shape S, same dtype
        1 at the stuck-at-1 bits, 0 elsewhere.
    nbits : int
        Bits per word.

    Math
    ----
    ``apply(codes) = (codes AND and_mask) OR or_mask``: a stuck-at-0 bit reads 0 and a stuck-at-1 bit
    reads 1 whatever was written; every other bit reads what was written.

    Notes
    -----
    The masks are read-only copies. Applying twice is the same as applying once (idempotent).
    """

    and_mask: np.ndarray
    or_mask: np.ndarray
    nbits: int

    def __post_init__(self) -> None:
        fn = "StuckAtMap"
        check_codes(self.and_mask, fn, "and_mask")
        check_codes(self.or_mask, fn, "or_mask")
        validation.check_same_dtype(fn, and_mask=self.and_mask, or_mask=self.or_mask)
        validation.check_shape(self.or_mask, "or_mask", fn, self.and_mask.shape)
        nbits = resolve_nbits(self.and_mask, self.nbits, fn)
        dt = self.and_mask.dtype.type
        stuck0 = ~self.and_mask
        both = np.flatnonzero((stuck0 & self.or_mask) != 0)
        if both.size:
            i = int(both[0])
            word = int((stuck0 & self.or_mask).reshape(-1)[i])
            raise ValueError(
                f"{fn}: a bit cannot be both stuck-at-0 (and_mask) and stuck-at-1 (or_mask), "
                f"got element {i}, bits {word:#x}"
            )
        high = dt(0) if nbits == self.and_mask.dtype.itemsize * 8 else ~dt((1 << nbits) - 1)
        above = np.flatnonzero(((stuck0 | self.or_mask) & high) != 0)
        if above.size:
            i = int(above[0])
            word = int(((stuck0 | self.or_mask) & high).reshape(-1)[i])
            raise ValueError(
                f"{fn}: stuck bits must be below nbits (={nbits}), got element {i}, bits {word:#x}"
            )
        object.__setattr__(self, "and_mask", _frozen_copy(self.and_mask))
        object.__setattr__(self, "or_mask", _frozen_copy(self.or_mask))
        object.__setattr__(self, "nbits", nbits)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.and_mask.shape

    @property
    def n_stuck0(self) -> int:
        """Number of stuck-at-0 bits."""
        return int(np.unpackbits((~self.and_mask).view(np.uint8)).sum())

    @property
    def n_stuck1(self) -> int:
        """Number of stuck-at-1 bits."""
        return int(np.unpackbits(self.or_mask.view(np.uint8)).sum())

    def apply(self, codes: np.ndarray) -> np.ndarray:
        """What reading ``codes`` back from this chip gives: ``(codes & and_mask) | or_mask`` (new array)."""
        fn = "StuckAtMap.apply"
        check_codes(codes, fn)
        if codes.dtype != self.and_mask.dtype:
            raise TypeError(
                f"{fn}: codes must have dtype {self.and_mask.dtype} (the map's), got {codes.dtype}"
            )
        validation.check_shape(codes, "codes", fn, self.shape)
        return np.asarray((codes & self.and_mask) | self.or_mask)  # 0-d stays an array

    def to_faultlist(self, *, tensor: str = "", format_name: str | None = None) -> FaultList:
        """The stuck bits as a FaultList (kinds ``"stuck0"`` / ``"stuck1"``), ordered by (index, bit)."""
        fn = "StuckAtMap.to_faultlist"
        tensor = check_tensor_name(tensor, fn)
        fmt_name = default_format_name(format_name, self.nbits, fn)
        index, bit, kind = [], [], []
        for b in range(self.nbits):
            one = self.and_mask.dtype.type(1 << b)
            for name, hit in (("stuck0", (self.and_mask & one) == 0), ("stuck1", (self.or_mask & one) != 0)):
                idx = np.flatnonzero(hit)
                index.append(idx)
                bit.append(np.full(idx.size, b, dtype=np.uint8))
                kind.extend([name] * idx.size)
        index_all = np.concatenate(index)
        bit_all = np.concatenate(bit)
        order = np.lexsort((bit_all, index_all))
        return FaultList.from_arrays(
            index_all[order],
            bit_all[order],
            kind=[kind[i] for i in order],
            tensor=tensor,
            format_name=fmt_name,
        )


def _frozen_copy(a: np.ndarray) -> np.ndarray:
    a = np.array(a, order="C", copy=True)
    a.flags.writeable = False
    return a


def sample_stuck_at_map(
    shape: int | tuple[int, ...],
    nbits: int,
    p: float,
    *,
    rng: np.random.Generator | int,
    p_stuck1: float = 0.5,
    bit_mask: Any = None,
    dtype: Any = None,
) -> StuckAtMap:
    """Sample a chip's stuck-at map: each bit is stuck with probability ``p``.

    No PyTorch equivalent. Sample once per simulated chip, then ``map.apply`` every stored tensor.

    Parameters
    ----------
    shape : int or tuple of int
        Shape of the stored tensor.
    nbits : int in [1, 64]
        Bits per word.
    p : float in [0, 1]
        Probability that a bit is stuck.
    rng : numpy.random.Generator or int
    p_stuck1 : float in [0, 1]
        Probability that a stuck bit is stuck at 1 (else at 0).
    bit_mask : as in :func:`inject_bit_errors`
        Only these bits can be stuck.
    dtype : unsigned dtype or None
        Container of the masks (default: the smallest holding ``nbits``).

    Returns
    -------
    StuckAtMap

    Math
    ----
    Independently per candidate bit: stuck with probability ``p``; a stuck bit is stuck-at-1 with
    probability ``p_stuck1``. Sampled like :func:`inject_bit_errors` (binomial count, distinct
    positions), then one uniform per stuck bit picks its value.
    """
    fn = "sample_stuck_at_map"
    shape = _check_shape_arg(shape, fn)
    nbits = _check_format_nbits(nbits, fn)
    try:
        container = smallest_container(nbits) if dtype is None else np.dtype(dtype)
    except TypeError:
        raise TypeError(
            f"{fn}: dtype must be an unsigned integer dtype (uint8/16/32/64), got {dtype!r}"
        ) from None
    if container not in (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32), np.dtype(np.uint64)):
        raise TypeError(f"{fn}: dtype must be an unsigned integer dtype (uint8/16/32/64), got {container}")
    if nbits > container.itemsize * 8:
        raise ValueError(
            f"{fn}: nbits must be at most {container.itemsize * 8} for dtype {container}, got {nbits}"
        )
    p = validation.check_probability(p, "p", fn)
    p_stuck1 = validation.check_probability(p_stuck1, "p_stuck1", fn)
    rng = validation.check_rng(rng, fn)
    bits = bit_indices(bit_mask, nbits, fn)
    size = int(np.prod(shape, dtype=np.int64))
    flips = positions_to_flips(bernoulli_positions(size * bits.size, p, rng), bits)
    is1 = rng.random(flips.index.size) < p_stuck1
    zeros = np.zeros(shape, dtype=container)
    stuck0 = xor_flips(zeros, FlipPositions(flips.index[~is1], flips.bit[~is1]))
    stuck1 = xor_flips(zeros, FlipPositions(flips.index[is1], flips.bit[is1]))
    # np.asarray: ~ of a 0-d array is a NumPy scalar, which StuckAtMap (rightly) refuses
    return StuckAtMap(and_mask=np.asarray(~stuck0), or_mask=stuck1, nbits=nbits)


def inject_bursts(
    codes: np.ndarray,
    rate: float,
    burst_len: int,
    *,
    rng: np.random.Generator | int,
    nbits: int | None = None,
) -> np.ndarray:
    """Multi-bit bursts: a hit word gets ``burst_len`` adjacent bits flipped.

    No PyTorch equivalent. Models a particle strike or a row-hammer burst that corrupts neighbouring
    bits of one word.

    Parameters
    ----------
    codes : ndarray of uint8/16/32/64, any shape
    rate : float in [0, 1]
        Probability that a word is hit by a burst (independently per word).
    burst_len : int in [1, nbits]
        Number of adjacent bits a burst flips.
    rng, nbits
        As in :func:`inject_bit_errors`.

    Returns
    -------
    out : ndarray, same shape and dtype as ``codes``
        The new codes only; :class:`saf_ref.bits.faultmodels.Bursts` returns them with their FaultList
        (``burst_len`` flip records per burst).

    Math
    ----
    Model: each word is hit independently with probability ``rate``; a hit word gets exactly one burst,
    whose lowest bit ``s`` is uniform on ``{0, ..., nbits - burst_len}``, so it never crosses the word
    boundary; the burst flips bits ``s .. s + burst_len - 1``:
    ``out = codes XOR ((2^burst_len - 1) << s)``. Expected flipped bits per word: ``rate * burst_len``.
    """
    fn = "inject_bursts"
    check_codes(codes, fn)
    nbits = resolve_nbits(codes, nbits, fn)
    rate = validation.check_probability(rate, "rate", fn)
    burst_len = validation.check_int(burst_len, "burst_len", fn, low=1, high=nbits)
    rng = validation.check_rng(rng, fn)
    return xor_flips(codes, draw_bursts(codes.size, nbits, rate, burst_len, rng))


# ---------------------------------------------------------------------------------------------------------
# 4. Nested flip patterns for BER sweeps
# ---------------------------------------------------------------------------------------------------------
def sample_nested_flips(
    shape: int | tuple[int, ...],
    nbits: int,
    rates: Sequence[float],
    *,
    rng: np.random.Generator | int,
    bit_mask: Any = None,
) -> list[FlipPositions]:
    """Flip positions at several bit-error rates, nested: the flips at ``p1 < p2`` are among those at ``p2``.

    No PyTorch equivalent. A BER sweep with nested patterns compares rates on the same "chip", so the
    accuracy-versus-rate curve is monotone in the faults, not noisy across independent draws; this is
    what one uniform array gives in :func:`flip_by_uniform`, here in time proportional to the flips.

    Parameters
    ----------
    shape : int or tuple of int
        Shape of the codes array the positions are for.
    nbits : int in [1, 64]
        Bits per word.
    rates : sequence of float in [0, 1]
        Bit-error rates, in any order.
    rng : numpy.random.Generator or int
    bit_mask : as in :func:`inject_bit_errors`

    Returns
    -------
    list of FlipPositions, one per rate in the order of ``rates``
        Apply one with :func:`apply_flips`.

    Math
    ----
    With ``p* = max(rates)``, draw candidate positions of a Bernoulli(``p*``) process over all
    candidate bits, and one uniform ``u`` per candidate; at rate ``p`` keep the candidates with
    ``u < p / p*``. Marginally a bit flips at rate ``p`` with probability ``p* * (p / p*) = p``,
    independently of the other bits; and ``u < p1 / p*`` implies ``u < p2 / p*``, so the patterns nest.
    """
    fn = "sample_nested_flips"
    shape = _check_shape_arg(shape, fn)
    nbits = _check_format_nbits(nbits, fn)
    if isinstance(rates, (str, bytes)) or not isinstance(rates, Iterable):
        raise TypeError(f"{fn}: rates must be a sequence of probabilities, got {validation.describe(rates)}")
    rates = [validation.check_probability(r, f"rates[{i}]", fn) for i, r in enumerate(rates)]
    rng = validation.check_rng(rng, fn)
    bits = bit_indices(bit_mask, nbits, fn)
    if not rates:
        return []
    pmax = max(rates)
    size = int(np.prod(shape, dtype=np.int64))
    candidates = positions_to_flips(bernoulli_positions(size * bits.size, pmax, rng), bits)
    u = rng.random(candidates.index.size)
    out = []
    for r in rates:
        keep = u < r / pmax if pmax > 0 else np.zeros(u.size, dtype=bool)
        out.append(FlipPositions(candidates.index[keep], candidates.bit[keep]))
    return out
