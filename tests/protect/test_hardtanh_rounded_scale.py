"""hardtanh's derivative at ``|u| = float32(a) < a`` (documented in ``Transform.grad``): saf_ref follows
the float64 truth (``|u| < a``, so 1); PyTorch's float32 kernel compares with ``float32(a)`` and gives 0."""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.protect import Transform


@pytest.mark.parametrize("a", [0.7, 0.1, 1e-3])
def test_grad_at_the_rounded_scale_follows_the_float64_truth(a):
    a32 = np.float32(a)
    u = np.array([a32, -a32, np.nextafter(a32, np.float32(1))], np.float32)
    # the truth, by hand: the float32 latent, exactly, compared with the real a (as a float64)
    truth = (np.abs(u.astype(np.float64)) < a).astype(np.float32)
    t = Transform("hardtanh", a)
    np.testing.assert_array_equal(t.grad(u), truth)
    np.testing.assert_array_equal(t.grad(u.astype(np.float64)), truth.astype(np.float64))
    np.testing.assert_array_equal(t.forward(u)[:2], u[:2])  # below a: not clipped, as in float64


def test_pytorch_differs_where_the_scale_rounds_down():
    torch = pytest.importorskip("torch")
    a = 0.7
    assert float(np.float32(a)) < a  # the case the Notes describe
    u = torch.tensor([np.float32(a)], requires_grad=True)
    (g,) = torch.autograd.grad(torch.nn.functional.hardtanh(u, -a, a).sum(), u)
    assert g.item() == 0.0 and Transform("hardtanh", a).grad(u.detach().numpy())[0] == 1.0
