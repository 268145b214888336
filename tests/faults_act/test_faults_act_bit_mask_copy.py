"""ActivationFaults keeps its own copy of bit_mask: changing the caller's list or array afterwards does not
change which bits flip. It used to hand the caller's object to BitErrors, which read it again at every
call, so a mask appended to after construction flipped bits the counts did not count (flips > bits).
"""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.faults_act import ActivationFaults


def _flipped_bits(out: np.ndarray, h: np.ndarray) -> set[int]:
    """The float16 bit positions that differ, from the words themselves (independent of the hook)."""
    diff = out.astype(np.float16).view(np.uint16) ^ h.astype(np.float16).view(np.uint16)
    return {b for b in range(16) if np.any(diff >> np.uint16(b) & np.uint16(1))}


@pytest.mark.parametrize("make, change", [
    (lambda: [3], lambda m: m.append(14)),
    (lambda: np.array([3]), lambda m: m.__setitem__(0, 14)),
    (lambda: np.eye(16, dtype=bool)[3].copy(), lambda m: m.__setitem__(14, True)),
])  # fmt: skip
def test_changing_the_callers_mask_after_construction_changes_nothing(make, change):
    h = np.full((4, 64), 1.5, dtype=np.float32)
    mask = make()
    faults = ActivationFaults("a", taps=("a",), format="float16", p=0.5, bit_mask=mask, rng=0)
    change(mask)
    out = faults("a", h)
    assert _flipped_bits(out, h) == {3}
    c = faults.counts["a"]
    assert c.bits == c.words == h.size and 0 < c.flips <= c.bits
    # and the same draws as the integer mask of that bit
    same = ActivationFaults("a", taps=("a",), format="float16", p=0.5, bit_mask=1 << 3, rng=0)
    assert same("a", h).tobytes() == out.tobytes()
