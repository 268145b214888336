#!/usr/bin/env python
"""Measure what one bit flip does to weights stored in MX formats (shared scales) and in scalar formats.

Stores the parameters of a freshly initialised ResNet-20 (``init_resnet("resnet20", rng=0)``, every
parameter, as ``saf-ref demo`` exposes them) in each format, draws single bit flips uniformly over all the
stored bits (scales, elements and padding for MX) and, for each flip, decodes the values it touches and
compares them with the clean ones, in float32 (the dtype the network computes in). Prints a Markdown table:

- ``bits/value``: stored bits per parameter (MX: ``element bits + 8/32`` plus the padding of short rows);
- ``in scales``: the share of stored bits that are shared scales;
- ``values hit / flip``: mean number of parameters changed by one flip (any flip; then scale flips only);
- ``huge / flip``: mean number of parameters that become non-finite or grow past ``10 * max|w|`` of their
  tensor (the kind of corruption that breaks a network), per flip.

Usage (from the repository root; about a minute)::

    python scripts/measure_mx_flips.py [--flips 20000] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np

from saf_ref.bits import MXFormat
from saf_ref.nn.resnet import init_resnet
from saf_ref.protect import StorageRule, StorageSpec, store

FORMATS = ("float16", "bfloat16", "float8_e4m3fn", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2",
           "mxfp4", "mxint8")


def _flip_effects_scalar(fmt, codes: np.ndarray, clean: np.ndarray, idx, bit, limit: float):
    """(values changed, values huge) for single flips of scalar words."""
    flat = codes.reshape(-1)
    flipped = flat[idx] ^ (np.ones_like(flat[idx]) << bit.astype(flat.dtype))
    new = np.asarray(fmt.decode_tensor(flipped, None), dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        new32 = new.astype(np.float32)
    old = clean.reshape(-1)[idx]
    changed = ~((new32 == old) | (np.isnan(new32) & np.isnan(old)))
    huge = ~np.isfinite(new32) | (np.abs(new32) > limit)
    return changed.astype(int), (huge & changed).astype(int), np.zeros(idx.shape, bool)


def _flip_effects_mx(fmt: MXFormat, codes, shape, clean, idx, bit, limit: float):
    """(values changed, values huge, hit a scale) for single flips of an MX tensor's bytes."""
    scales, elements = fmt.unpack(codes, shape)
    s_flat = scales.reshape(-1)
    e_blocks = elements.reshape(-1, fmt.block_size)
    is_scale, number, field_bit = fmt.locate(shape, idx, bit)
    block = np.where(is_scale, number, number // fmt.block_size)
    n_changed = np.zeros(idx.shape, int)
    n_huge = np.zeros(idx.shape, int)
    flat_clean = clean.reshape(-1)
    for j in range(idx.size):
        b = int(block[j])
        s = s_flat[b : b + 1].reshape(1, 1).copy()
        e = e_blocks[b].reshape(1, 1, -1).copy()
        if is_scale[j]:
            s ^= np.uint8(1 << int(field_bit[j]))
        else:
            e[0, 0, int(number[j]) % fmt.block_size] ^= e.dtype.type(1 << int(field_bit[j]))
        with np.errstate(over="ignore", invalid="ignore"):
            new = fmt.dequantize(s, e, (fmt.block_size,)).astype(np.float32)
        where = fmt.element_index(shape, np.arange(b * fmt.block_size, (b + 1) * fmt.block_size))
        real = where >= 0
        new, old = new[real], flat_clean[where[real]]
        changed = ~((new == old) | (np.isnan(new) & np.isnan(old)))
        huge = changed & (~np.isfinite(new) | (np.abs(new) > limit))
        n_changed[j], n_huge[j] = int(changed.sum()), int(huge.sum())
    return n_changed, n_huge, is_scale


def measure(name: str, params: dict[str, np.ndarray], flips: int, seed: int) -> dict[str, float]:
    stored = store(params, StorageSpec((StorageRule("*", format=name),)))
    codec = stored.spec.rules[0].format
    bits = np.array([stored[k].bits for k in stored], dtype=np.float64)
    rng = np.random.default_rng(seed)
    which = rng.choice(len(bits), size=flips, p=bits / bits.sum())
    changed, huge, scale = [], [], []
    for t, name_t in enumerate(stored):
        n = int((which == t).sum())
        if not n:
            continue
        st = stored[name_t]
        idx = rng.integers(0, st.codes.size, n)
        bit = rng.integers(0, st.nbits, n)
        clean = np.asarray(codec.decode_tensor(st.codes, st.context), np.float64).astype(np.float32)
        limit = 10 * float(np.abs(params[name_t]).max())
        if isinstance(codec, MXFormat):
            c, h, s = _flip_effects_mx(codec, st.codes, st.shape, clean, idx, bit, limit)
        else:
            c, h, s = _flip_effects_scalar(codec, st.codes, clean, idx, bit, limit)
        changed.append(c)
        huge.append(h)
        scale.append(s)
    changed, huge, scale = (np.concatenate(a) for a in (changed, huge, scale))
    n_params = sum(p.size for p in params.values())
    scale_bits = sum(8 * codec.layout(p.shape).n_blocks for p in params.values()) if isinstance(
        codec, MXFormat) else 0
    return {
        "bits/value": bits.sum() / n_params,
        "in scales": scale_bits / bits.sum(),
        "values hit / flip": changed.mean(),
        "values hit / scale flip": changed[scale].mean() if scale.any() else float("nan"),
        "huge / flip": huge.mean(),
        "huge / scale flip": huge[scale].mean() if scale.any() else float("nan"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    params, _ = init_resnet("resnet20", rng=0)
    rows = {name: measure(name, params, args.flips, args.seed) for name in FORMATS}
    cols = list(next(iter(rows.values())))
    print("| format | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, r in rows.items():
        cells = [f"{r['bits/value']:.2f}", f"{100 * r['in scales']:.1f}%"] + [
            "-" if np.isnan(r[c]) else f"{r[c]:.3f}" for c in cols[2:]
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
