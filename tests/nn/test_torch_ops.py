"""Every op against PyTorch CPU: float64 to ~1e-10 (normwise relative), float32 within the error bounds.

Skipped cleanly where torch is not installed. PyTorch is an independent implementation: autograd gives
the gradients, ``F.batch_norm`` updates its own running-statistics buffers, ``max_pool2d`` returns its
indices.
"""

from __future__ import annotations

import numpy as np
import pytest
from nn_helpers import bn_bounds, rel_error

from saf_ref.nn.activations import relu_clipped_forward, relu_clipped_vjp, relu_forward, relu_vjp
from saf_ref.nn.batchnorm import batchnorm2d_backward, batchnorm2d_forward
from saf_ref.nn.conv import conv2d_forward, conv2d_vjp
from saf_ref.nn.linear import linear_forward, linear_vjp
from saf_ref.nn.loss import cross_entropy_forward, cross_entropy_vjp
from saf_ref.nn.pool import global_avgpool_forward, global_avgpool_vjp, maxpool2d_forward, maxpool2d_vjp
from saf_ref.testing.tolerance import assert_within_dot_bound

torch = pytest.importorskip("torch")
F = torch.nn.functional
pytestmark = pytest.mark.torch

TORCH_RTOL = 1e-10
U32 = 2.0**-24


@pytest.fixture(autouse=True)
def _two_threads():
    """Deterministic and CI-sized: PyTorch's CPU kernels on 2 threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def leaf(a):
    """A torch leaf tensor (own copy of the data) that records gradients."""
    return torch.tensor(a, requires_grad=True)


def grads_of(out, dy, *tensors):
    """Run autograd for ``sum(out * dy)`` and return the gradients as NumPy arrays."""
    out.backward(torch.tensor(dy))
    return [t.grad.numpy() for t in tensors]


def draw(rng, dtype, *shapes, offset=0.0):
    return [(offset + rng.standard_normal(s)).astype(dtype) for s in shapes]


# ---------------------------------------------------------------------------------------------- conv2d
CONV_CONFIGS = [
    ((2, 3, 8, 8), (4, 3, 3, 3), 1, 1),
    ((2, 4, 9, 9), (6, 4, 3, 3), 2, 1),
    ((2, 4, 8, 8), (6, 4, 1, 1), 2, 0),
    ((1, 3, 7, 10), (2, 3, 2, 3), (2, 1), (1, 0)),
    ((3, 16, 8, 8), (16, 16, 3, 3), 1, 1),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("x_shape, w_shape, stride, padding", CONV_CONFIGS)
def test_conv2d(x_shape, w_shape, stride, padding, dtype):
    rng = np.random.default_rng(0)
    x, w, b = draw(rng, dtype, x_shape, w_shape, (w_shape[0],))
    kw = {"stride": stride, "padding": padding}
    tx, tw, tb = leaf(x), leaf(w), leaf(b)
    ty = F.conv2d(tx, tw, tb, **kw)
    dy = rng.standard_normal(tuple(ty.shape)).astype(dtype)
    t_grads = grads_of(ty, dy, tx, tw, tb)
    t_outs = [ty.detach().numpy(), *t_grads]
    if dtype == np.float64:
        y, _ = conv2d_forward(x, w, b, **kw)
        ours = (y, *conv2d_vjp(x, w, b, dy, **kw))
        for name, a, t in zip(("y", "dx", "dw", "db"), ours, t_outs, strict=True):
            assert rel_error(a, t) <= TORCH_RTOL, name
        return
    # float32: torch's result against our float64 result, within the dot-product bound.
    x64, w64, b64, dy64 = (a.astype(np.float64) for a in (x, w, b, dy))
    refs = [conv2d_forward(x64, w64, b64, **kw)[0], *conv2d_vjp(x64, w64, b64, dy64, **kw)]
    absolute = [np.abs(a) for a in (x64, w64, b64)]
    mags = [conv2d_forward(*absolute, **kw)[0], *conv2d_vjp(*absolute, np.abs(dy64), **kw)]
    c, (o, _, kh, kwid) = x_shape[1], w_shape
    n_out = dy.shape[0] * dy.shape[2] * dy.shape[3]
    ks = [c * kh * kwid + 1, o * kh * kwid, n_out, n_out]
    for name, got, ref, mag, k in zip(("y", "dx", "dw", "db"), t_outs, refs, mags, ks, strict=True):
        assert_within_dot_bound(got, ref, mag, k, u=U32, what=f"torch conv2d {name}", repro=f"{x_shape}")


# ----------------------------------------------------------------------------------------- batchnorm2d
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape, offset", [((4, 3, 5, 5), 0.0), ((8, 2, 3, 3), 20.0), ((2, 3, 1, 1), 1.0)])
def test_batchnorm2d(shape, offset, train, dtype):
    rng = np.random.default_rng(1)
    c = shape[1]
    x, weight, bias, rm = draw(rng, dtype, shape, (c,), (c,), (c,))
    x = x + dtype(offset)
    rv = rng.uniform(0.5, 2.0, c).astype(dtype)
    momentum, eps = 0.3, 1e-5
    tx, tw, tb = leaf(x), leaf(weight), leaf(bias)
    t_rm, t_rv = torch.tensor(rm), torch.tensor(rv)  # copies: torch updates them in place
    ty = F.batch_norm(tx, t_rm, t_rv, tw, tb, training=train, momentum=momentum, eps=eps)
    dy = rng.standard_normal(shape).astype(dtype)
    t_outs = [ty.detach().numpy(), t_rm.numpy(), t_rv.numpy(), *grads_of(ty, dy, tx, tw, tb)]
    names = ("y", "mean", "var", "dx", "dweight", "dbias")
    kw = {"train": train, "momentum": momentum, "eps": eps}
    if dtype == np.float64:
        *outs, cache = batchnorm2d_forward(x, weight, bias, rm, rv, **kw)
        for name, ours, theirs in zip(names, (*outs, *batchnorm2d_backward(dy, cache)), t_outs, strict=True):
            assert rel_error(ours, theirs) <= TORCH_RTOL, name
        return
    args64 = [a.astype(np.float64) for a in (x, weight, bias, rm, rv)]
    *outs, cache = batchnorm2d_forward(*args64, **kw)
    refs = [*outs, *batchnorm2d_backward(dy.astype(np.float64), cache)]
    bounds = bn_bounds(*args64, dy, train=train, momentum=momentum, eps=eps)
    for name, got, ref in zip(names, t_outs, refs, strict=True):
        mag, k = bounds[name]
        assert_within_dot_bound(got, ref, mag, k, u=U32, c=2.0, what=f"torch batchnorm2d {name}")


# ------------------------------------------------------------------------------------------------ relu
SPECIALS = [0.0, -0.0, 1.0, -1.0, 6.0, 5.5, 7.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45]


def bits(a):
    a = np.asarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_relu_and_clipped_relu_are_bit_exact(dtype):
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal(40) * 5, SPECIALS]).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dy[::3] *= -1
    for ours_fwd, ours_vjp, torch_fn in (
        (relu_forward, relu_vjp, torch.relu),
        (
            lambda v: relu_clipped_forward(v, ceiling=6.0),
            lambda v, g: relu_clipped_vjp(v, g, ceiling=6.0),
            lambda t: F.hardtanh(t, 0.0, 6.0),
        ),
    ):
        tx = leaf(x)
        ty = torch_fn(tx)
        (t_dx,) = grads_of(ty, dy, tx)
        np.testing.assert_array_equal(bits(ours_fwd(x)[0]), bits(ty.detach().numpy()))
        np.testing.assert_array_equal(bits(ours_vjp(x, dy).dx), bits(t_dx))


# --------------------------------------------------------------------------------------------- pooling
MAXPOOL_CONFIGS = [((2, 3, 9, 9), 3, 2, 1), ((1, 2, 7, 6), (2, 3), (1, 2), (1, 1)), ((1, 2, 6, 6), 2, 2, 0)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("values", ["normal", "ties", "specials"])
@pytest.mark.parametrize("x_shape, k, s, p", MAXPOOL_CONFIGS)
def test_maxpool2d_values_indices_and_gradient(x_shape, k, s, p, values, dtype):
    rng = np.random.default_rng(3)
    if values == "normal":
        x = rng.standard_normal(x_shape)
    elif values == "ties":
        x = rng.integers(-1, 2, x_shape).astype(np.float64)
    else:
        x = rng.choice([-np.inf, 0.0, -0.0, 1.0, 1.0, np.inf, np.nan], size=x_shape)
    x = x.astype(dtype)
    kw = {"kernel_size": k, "stride": s, "padding": p}
    tx = leaf(x)
    ty, t_idx = F.max_pool2d(tx, k, s, p, return_indices=True)
    y, cache = maxpool2d_forward(x, **kw)
    np.testing.assert_array_equal(bits(y), bits(ty.detach().numpy()))
    np.testing.assert_array_equal(cache.indices, t_idx.numpy())
    dy = rng.standard_normal(y.shape).astype(dtype)
    (t_dx,) = grads_of(ty, dy, tx)
    dx = maxpool2d_vjp(x, dy, **kw).dx
    # Overlapping windows add up to ceil(k/s)^2 <= 4 gradients, possibly in another order.
    mag = maxpool2d_vjp(x.astype(np.float64), np.abs(dy).astype(np.float64), **kw).dx
    u = U32 if dtype == np.float32 else 2.0**-53
    assert_within_dot_bound(dx, t_dx, mag, 4, u=u, c=2.0, what="maxpool2d dx")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_global_avgpool(dtype):
    rng = np.random.default_rng(4)
    (x,) = draw(rng, dtype, (4, 5, 6, 7), offset=2.0)
    tx = leaf(x)
    ty = F.adaptive_avg_pool2d(tx, 1).flatten(1)
    dy = rng.standard_normal((4, 5)).astype(dtype)
    (t_dx,) = grads_of(ty, dy, tx)
    y, _ = global_avgpool_forward(x)
    dx = global_avgpool_vjp(x, dy).dx
    if dtype == np.float64:
        assert rel_error(y, ty.detach().numpy()) <= TORCH_RTOL
        assert rel_error(dx, t_dx) <= TORCH_RTOL
        return
    x64 = x.astype(np.float64)
    y64 = global_avgpool_forward(x64)[0]
    assert_within_dot_bound(ty.detach().numpy(), y64, global_avgpool_forward(np.abs(x64))[0], 43, u=U32)
    dx64 = global_avgpool_vjp(x64, dy.astype(np.float64)).dx
    assert_within_dot_bound(t_dx, dx64, np.abs(dx64), 2, u=U32, what="dx")


# ---------------------------------------------------------------------------------------------- linear
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_linear(dtype):
    rng = np.random.default_rng(5)
    n, d_in, d_out = 8, 64, 10
    x, w, b, dy = draw(rng, dtype, (n, d_in), (d_out, d_in), (d_out,), (n, d_out))
    tx, tw, tb = leaf(x), leaf(w), leaf(b)
    ty = F.linear(tx, tw, tb)
    t_outs = [ty.detach().numpy(), *grads_of(ty, dy, tx, tw, tb)]
    if dtype == np.float64:
        ours = [linear_forward(x, w, b)[0], *linear_vjp(x, w, b, dy)]
        for name, a, t in zip(("y", "dx", "dw", "db"), ours, t_outs, strict=True):
            assert rel_error(a, t) <= TORCH_RTOL, name
        return
    args64 = [a.astype(np.float64) for a in (x, w, b, dy)]
    refs = [linear_forward(*args64[:3])[0], *linear_vjp(*args64)]
    absolute = [np.abs(a) for a in args64]
    mags = [linear_forward(*absolute[:3])[0], *linear_vjp(*absolute)]
    ks = (d_in + 1, d_out, n, n)
    for name, got, ref, mag, k in zip(("y", "dx", "dw", "db"), t_outs, refs, mags, ks, strict=True):
        assert_within_dot_bound(got, ref, mag, k, u=U32, what=f"torch linear {name}")


# --------------------------------------------------------------------------------------- cross-entropy
def ce_bounds(logits, labels, eps):
    """Magnitudes and term counts for a float32 log-softmax cross-entropy (as PyTorch computes it).

    With ``m`` the row maximum and ``lse = log sum exp(z - m)``, each ``log p_k = (z_k - m) - lse`` is off
    by at most ``gamma_{K+3} (|z_k - m| + 1 + lse)`` (the subtraction, the K-term sum of exponentials,
    the log). The loss weights these by the target ``q`` and averages over N samples; ``p_k = exp(log p_k)``
    inherits the same relative error, and ``dlogits = (p - q) / N``.
    """
    z = logits.astype(np.float64)
    n, k = z.shape
    shifted = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    p = np.exp(shifted - lse)
    q = np.full((n, k), eps / k)
    q[np.arange(n), labels] += 1 - eps
    err_logp = np.abs(shifted) + 1 + lse
    # Errors of the log-probabilities, plus the loss itself for the final sum and division by N.
    loss_mag = np.array(np.mean(np.sum(q * (err_logp + lse - shifted), axis=1)))
    return (loss_mag, k + n + 5), ((p * (err_logp + 1) + q) / n, k + 5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
def test_cross_entropy(smoothing, dtype):
    rng = np.random.default_rng(6)
    logits = (5 * rng.standard_normal((16, 10))).astype(dtype)
    labels = rng.integers(0, 10, 16)
    tz = leaf(logits)
    t_loss = F.cross_entropy(tz, torch.tensor(labels), label_smoothing=smoothing)
    t_loss.backward()
    t_d = tz.grad.numpy()
    if dtype == np.float64:
        loss, _ = cross_entropy_forward(logits, labels, label_smoothing=smoothing)
        d = cross_entropy_vjp(logits, labels, 1.0, label_smoothing=smoothing).dlogits
        assert rel_error(np.array(loss), t_loss.detach().numpy()) <= TORCH_RTOL
        assert rel_error(d, t_d) <= TORCH_RTOL
        return
    z64 = logits.astype(np.float64)
    loss64, _ = cross_entropy_forward(z64, labels, label_smoothing=smoothing)
    d64 = cross_entropy_vjp(z64, labels, 1.0, label_smoothing=smoothing).dlogits
    (loss_mag, k_loss), (d_mag, k_d) = ce_bounds(logits, labels, smoothing)
    assert_within_dot_bound(t_loss.detach().numpy(), np.array(loss64), loss_mag, k_loss, u=U32, what="loss")
    assert_within_dot_bound(t_d, d64, d_mag, k_d, u=U32, what="dlogits")
