"""Tests for saf_ref.train.optim: SGD with PyTorch's update rules.

References: an element-by-element loop over NumPy scalars written here (bit-exact, same rounding per
operation), and torch.optim.SGD (which fuses ``a + alpha * b`` into one FMA on CPU, so it agrees within an
error bound, and bit for bit when the products are exact).
"""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.train.optim import BUFFER_PREFIX, SGD, STEP_KEY, sgd_init, sgd_step, sgd_update

DTYPES = (np.float32, np.float64)
SHAPES = {"conv1.weight": (8, 3, 3, 3), "bn1.bias": (8,), "fc.weight": (10, 8), "scalar": ()}
CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, weight_decay=5e-4),
    dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
    dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3),
    dict(lr=0.03, momentum=0.5, dampening=-0.5),
]


def make(dtype, rng, shapes=SHAPES):
    return {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}


def naive_sgd(p, grad, buf, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
    """PyTorch's rules written out one element at a time with NumPy scalars of the parameter dtype."""
    t = p.dtype.type
    out_p, out_b = np.empty_like(p), (None if momentum == 0 else np.empty_like(p))
    for i in np.ndindex(p.shape):
        g = grad[i]
        if weight_decay != 0:
            g = t(g + t(t(weight_decay) * p[i]))
        if momentum != 0:
            if buf is None:
                b = g
            else:
                b = t(t(buf[i] * t(momentum)) + t(t(1.0 - dampening) * g))
            out_b[i] = b
            g = t(g + t(t(momentum) * b)) if nesterov else b
        out_p[i] = t(p[i] - t(t(lr) * g))
    return out_p, out_b


# ------------------------------------------------------------------------------------------------
# Bit-exact against the naive loop
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_matches_naive_loop_bit_for_bit(cfg, dtype):
    rng = np.random.default_rng(0)
    params = make(dtype, rng)
    ref_p = {k: v.copy() for k, v in params.items()}
    ref_b = dict.fromkeys(params)
    opt = SGD(**cfg)
    state = sgd_init(params)
    for step in range(4):
        grads = make(dtype, rng)
        lr = cfg["lr"] * (0.7**step)  # a schedule through the lr override
        params, state = sgd_step(params, grads, state, opt, lr=lr)
        for k in params:
            ref_p[k], ref_b[k] = naive_sgd(ref_p[k], grads[k], ref_b[k], **{**cfg, "lr": lr})
            assert params[k].dtype == dtype and params[k].shape == SHAPES[k]
            np.testing.assert_array_equal(params[k], ref_p[k], err_msg=k)
            if ref_b[k] is not None:
                np.testing.assert_array_equal(state[BUFFER_PREFIX + k], ref_b[k], err_msg=k)
            else:
                assert BUFFER_PREFIX + k not in state
        assert state[STEP_KEY] == step + 1 and state[STEP_KEY].dtype == np.int64


def test_first_momentum_step_clones_the_gradient_and_mixed_dtypes_per_tensor():
    rng = np.random.default_rng(1)
    params = {"a": rng.standard_normal(5).astype(np.float32), "b": rng.standard_normal(3)}
    grads = {"a": rng.standard_normal(5).astype(np.float32), "b": rng.standard_normal(3)}
    opt = SGD(0.1, momentum=0.9, weight_decay=0.01)
    new, state = opt.step(params, grads, opt.init(params))
    for k in params:
        g = grads[k] + params[k].dtype.type(0.01) * params[k]
        np.testing.assert_array_equal(state[BUFFER_PREFIX + k], g)  # buf = g on the first step
        np.testing.assert_array_equal(new[k], params[k] - params[k].dtype.type(0.1) * g)
        assert new[k].dtype == params[k].dtype


# ------------------------------------------------------------------------------------------------
# Against torch.optim.SGD
# ------------------------------------------------------------------------------------------------


def _torch_run(params, grads_seq, cfg):
    torch = pytest.importorskip("torch")
    tps = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    opt = torch.optim.SGD(list(tps.values()), **cfg)
    for grads in grads_seq:
        for k, tp in tps.items():
            tp.grad = torch.from_numpy(grads[k].copy())
        opt.step()
    buffers = {k: opt.state[tp].get("momentum_buffer") for k, tp in tps.items()}
    return {k: tp.detach().numpy() for k, tp in tps.items()}, {
        k: b.numpy() for k, b in buffers.items() if b is not None
    }


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_several_steps_against_torch(cfg, dtype):
    rng = np.random.default_rng(2)
    params0 = make(dtype, rng)
    grads_seq = [make(dtype, rng) for _ in range(10)]
    ref_p, ref_b = _torch_run(params0, grads_seq, cfg)
    params, state, opt = params0, sgd_init(params0), SGD(**cfg)
    for grads in grads_seq:
        params, state = sgd_step(params, grads, state, opt)
    # Normwise per tensor (elementwise relative error is meaningless where p cancels to ~0).
    # Measured: <= 7.2e-16 (float64) and <= 7.8e-7 (float32) over 20 steps; torch fuses into FMAs.
    rtol = 1e-15 if dtype == np.float64 else 2e-6
    for k in params:
        scale = np.max(np.abs(ref_p[k]))
        assert np.max(np.abs(params[k] - ref_p[k])) <= rtol * scale, k
        if k in ref_b:
            bscale = np.max(np.abs(ref_b[k]))
            assert np.max(np.abs(state[BUFFER_PREFIX + k] - ref_b[k])) <= rtol * bscale, k


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_one_step_against_torch_within_elementwise_rounding_bound(cfg, dtype):
    # From the same (p, grad, buf), each of the <= 4 rounded stages differs from torch's fused ones by at
    # most an ulp of the stage's magnitude, so |ours - torch| <= 4 u S with S the update evaluated on
    # absolute values (the classic running-error bound).
    rng = np.random.default_rng(3)
    n = 4099  # odd: exercises torch's vectorized body and scalar tail
    p, grad, buf = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    grad2 = rng.standard_normal(n).astype(dtype)
    ref_p, _ = _torch_run({"w": p}, [{"w": grad}, {"w": grad2}], cfg)
    opt = SGD(**cfg)
    p1, b1 = sgd_update(p, grad, None, opt, opt.lr)
    got, _ = sgd_update(p1, grad2, b1, opt, opt.lr)
    p1, b1 = p1.astype(np.float64), (None if b1 is None else np.abs(b1.astype(np.float64)))
    lam, mu, tau, eta = (cfg.get(k, 0.0) for k in ("weight_decay", "momentum", "dampening", "lr"))
    g_abs = np.abs(grad2.astype(np.float64)) + lam * np.abs(p1)
    if mu:
        b_abs = mu * b1 + abs(1 - tau) * g_abs
        g_abs = g_abs + mu * b_abs if cfg.get("nesterov") else b_abs
    s = np.abs(p1) + eta * g_abs
    u = float(np.finfo(dtype).eps) / 2
    # torch's first step may differ from ours too: allow the same bound again for the carried p1.
    diff = np.abs(got.astype(np.float64) - ref_p["w"].astype(np.float64))
    assert np.all(diff <= 8 * u * s), np.max(diff / (u * s))
    exact = np.mean(got == ref_p["w"])
    assert exact > 0.3  # most elements agree bit for bit; the rest by an FMA rounding


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nesterov", (False, True))
def test_bit_exact_with_torch_when_products_are_exact(dtype, nesterov):
    # Powers of two make every alpha * b exact, so torch's fused a + alpha * b rounds like ours.
    cfg = dict(lr=0.5, momentum=0.5, weight_decay=0.25, nesterov=nesterov)
    if not nesterov:
        cfg["dampening"] = 0.5
    rng = np.random.default_rng(4)
    params0 = make(dtype, rng)
    grads_seq = [make(dtype, rng) for _ in range(20)]
    ref_p, ref_b = _torch_run(params0, grads_seq, cfg)
    params, state, opt = params0, sgd_init(params0), SGD(**cfg)
    for grads in grads_seq:
        params, state = sgd_step(params, grads, state, opt)
    for k in params:
        np.testing.assert_array_equal(params[k], ref_p[k], err_msg=k)
        np.testing.assert_array_equal(state[BUFFER_PREFIX + k], ref_b[k], err_msg=k)


# ------------------------------------------------------------------------------------------------
# State handling, no mutation
# ------------------------------------------------------------------------------------------------


def test_never_mutates_inputs_and_returns_fresh_arrays():
    rng = np.random.default_rng(5)
    params, grads = make(np.float32, rng), make(np.float32, rng)
    opt = SGD(0.1, momentum=0.9, weight_decay=1e-4)
    _, state = sgd_step(params, make(np.float32, rng), sgd_init(params), opt)
    snapshot = [({k: v.copy() for k, v in d.items()}) for d in (params, grads, state)]
    for d in (params, grads, state):
        for v in d.values():
            v.flags.writeable = False
    new_p, new_s = sgd_step(params, grads, state, opt)
    for d, snap in zip((params, grads, state), snapshot, strict=True):
        for k in d:
            np.testing.assert_array_equal(d[k], snap[k])
    for k, v in new_p.items():
        assert isinstance(v, np.ndarray) and not np.shares_memory(v, params[k]) and v.flags.writeable
    for v in new_s.values():
        assert all(not np.shares_memory(v, old) for old in list(state.values()) + list(grads.values()))
    assert state[STEP_KEY] == 1 and new_s[STEP_KEY] == 2


def test_buffers_are_kept_when_momentum_is_zero_and_lr_zero_is_a_no_op():
    rng = np.random.default_rng(6)
    params, grads = make(np.float64, rng), make(np.float64, rng)
    _, state = sgd_step(params, grads, sgd_init(params), SGD(0.1, momentum=0.9))
    new_p, new_s = sgd_step(params, grads, state, SGD(0.1))
    for k in params:
        np.testing.assert_array_equal(new_s[BUFFER_PREFIX + k], state[BUFFER_PREFIX + k])
        assert not np.shares_memory(new_s[BUFFER_PREFIX + k], state[BUFFER_PREFIX + k])
        np.testing.assert_array_equal(new_p[k], params[k] - 0.1 * grads[k])  # no momentum used
    same, _ = sgd_step(params, grads, state, SGD(0.1, momentum=0.9), lr=0.0)
    for k in params:
        np.testing.assert_array_equal(same[k], params[k])


def test_zero_d_parameters_stay_arrays():
    p = {"s": np.array(1.5, dtype=np.float32)}
    new, state = sgd_step(p, {"s": np.array(2.0, dtype=np.float32)}, sgd_init(p), SGD(0.25, momentum=0.5))
    assert isinstance(new["s"], np.ndarray) and new["s"].shape == () and new["s"].dtype == np.float32
    assert new["s"] == np.float32(1.0)
    assert isinstance(state[BUFFER_PREFIX + "s"], np.ndarray) and state[BUFFER_PREFIX + "s"].shape == ()


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


def test_config_validation():
    with pytest.raises(ValueError, match="SGD: lr must be >= 0, got -0.1"):
        SGD(-0.1)
    with pytest.raises(ValueError, match="SGD: lr must be >= 0, got nan"):
        SGD(float("nan"))
    with pytest.raises(TypeError, match="SGD: lr must be a real number, got str"):
        SGD("0.1")
    with pytest.raises(ValueError, match="SGD: momentum must be >= 0"):
        SGD(0.1, momentum=-0.9)
    with pytest.raises(ValueError, match="SGD: weight_decay must be >= 0"):
        SGD(0.1, weight_decay=-1e-4)
    with pytest.raises(ValueError, match="SGD: dampening must be finite"):
        SGD(0.1, momentum=0.9, dampening=float("inf"))
    with pytest.raises(TypeError, match="SGD: dampening must be a real number"):
        SGD(0.1, dampening=None)
    with pytest.raises(TypeError, match="SGD: nesterov must be a bool, got int"):
        SGD(0.1, momentum=0.9, nesterov=1)
    with pytest.raises(ValueError, match="SGD: nesterov=True requires momentum > 0 and dampening == 0"):
        SGD(0.1, nesterov=True)
    with pytest.raises(ValueError, match="SGD: nesterov=True requires momentum > 0 and dampening == 0"):
        SGD(0.1, momentum=0.9, dampening=0.1, nesterov=True)
    assert SGD(1, momentum=0).lr == 1.0 and isinstance(SGD(1).lr, float)


def test_torch_rejects_the_same_configurations():
    torch = pytest.importorskip("torch")
    p = [torch.nn.Parameter(torch.zeros(1))]
    for kwargs in (dict(lr=-0.1), dict(lr=0.1, momentum=-1), dict(lr=0.1, weight_decay=-1),
                   dict(lr=0.1, nesterov=True), dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)):
        with pytest.raises(ValueError):
            torch.optim.SGD(p, **kwargs)
        with pytest.raises(ValueError):
            SGD(**kwargs)


def test_step_validation_names_the_tensor():
    rng = np.random.default_rng(7)
    params = make(np.float32, rng)
    grads = make(np.float32, rng)
    state = sgd_init(params)
    opt = SGD(0.1, momentum=0.9)
    with pytest.raises(TypeError, match="sgd_step: config must be an SGD, got dict"):
        sgd_step(params, grads, state, {"lr": 0.1})
    with pytest.raises(ValueError, match="sgd_step: grads is missing 'fc.weight', which is in params"):
        sgd_step(params, {k: v for k, v in grads.items() if k != "fc.weight"}, state, opt)
    with pytest.raises(ValueError, match="sgd_step: grads has 'extra', which is not in params"):
        sgd_step(params, {**grads, "extra": np.zeros(1, np.float32)}, state, opt)
    with pytest.raises(TypeError, match=r"sgd_step: grads\['bn1.bias'\].dtype \(=float64\) must equal "
                                        r"params\['bn1.bias'\].dtype \(=float32\)"):
        sgd_step(params, {**grads, "bn1.bias": grads["bn1.bias"].astype(np.float64)}, state, opt)
    with pytest.raises(ValueError, match=r"sgd_step: grads\['bn1.bias'\] must have shape \(8,\), got \(9,\)"):
        sgd_step(params, {**grads, "bn1.bias": np.zeros(9, np.float32)}, state, opt)
    with pytest.raises(TypeError, match=r"sgd_step: params\['fc.weight'\] must have dtype in"):
        sgd_step({**params, "fc.weight": np.zeros((10, 8), np.int64)}, grads, state, opt)
    with pytest.raises(TypeError, match=r"sgd_step: grads\['fc.weight'\] must be a numpy.ndarray, got list"):
        sgd_step(params, {**grads, "fc.weight": [1.0]}, state, opt)
    with pytest.raises(TypeError, match="sgd_step: params must be a dict of str -> numpy.ndarray, got list"):
        sgd_step([1.0], grads, state, opt)
    with pytest.raises(TypeError, match="sgd_step: params keys must be str, got int 3"):
        sgd_step({3: np.zeros(1)}, grads, state, opt)
    with pytest.raises(ValueError, match="sgd_step: lr must be >= 0, got -1"):
        sgd_step(params, grads, state, opt, lr=-1)
    with pytest.raises(TypeError, match="sgd_step: lr must be a real number"):
        sgd_step(params, grads, state, opt, lr="0.1")
    with pytest.raises(TypeError, match="sgd_init: params must be a dict"):
        sgd_init(None)


def test_state_validation_names_the_tensor():
    rng = np.random.default_rng(8)
    params, grads = make(np.float32, rng), make(np.float32, rng)
    opt = SGD(0.1, momentum=0.9)
    _, state = sgd_step(params, grads, sgd_init(params), opt)
    key = BUFFER_PREFIX + "fc.weight"
    with pytest.raises(TypeError, match="sgd_step: state must be a dict"):
        sgd_step(params, grads, None, opt)
    with pytest.raises(ValueError, match="sgd_step: state must have a 'step' entry"):
        sgd_step(params, grads, {}, opt)
    with pytest.raises(TypeError, match=r"sgd_step: state\['step'\] must be a 0-d integer array"):
        sgd_step(params, grads, {**state, STEP_KEY: np.array(1.0)}, opt)
    with pytest.raises(TypeError, match=r"sgd_step: state\['step'\] must be a numpy.ndarray, got int"):
        sgd_step(params, grads, {**state, STEP_KEY: 3}, opt)
    with pytest.raises(ValueError, match=r"sgd_step: state\['step'\] must be in \[0, inf\], got -2"):
        sgd_step(params, grads, {**state, STEP_KEY: np.array(-2)}, opt)
    with pytest.raises(ValueError, match="sgd_step: state key 'velocity' must be 'step' or start with"):
        sgd_step(params, grads, {**state, "velocity": np.zeros(1)}, opt)
    with pytest.raises(ValueError, match=r"sgd_step: state\['momentum_buffer/gone'\] is a momentum buffer "
                                         r"for 'gone', which is not in params"):
        sgd_step(params, grads, {**state, BUFFER_PREFIX + "gone": np.zeros(1)}, opt)
    with pytest.raises(TypeError, match=r"sgd_step: state\['momentum_buffer/fc.weight'\].dtype \(=float64\)"):
        sgd_step(params, grads, {**state, key: state[key].astype(np.float64)}, opt)
    with pytest.raises(ValueError, match=r"sgd_step: state\['momentum_buffer/fc.weight'\] must have shape"):
        sgd_step(params, grads, {**state, key: state[key][:2]}, opt)


def test_sgd_update_validation():
    p32, g32, opt = np.ones(3, np.float32), np.ones(3, np.float32), SGD(0.1, momentum=0.9)
    with pytest.raises(TypeError, match="sgd_update: config must be an SGD, got dict"):
        sgd_update(p32, g32, None, {"lr": 0.1}, 0.1)
    with pytest.raises(TypeError, match=r"sgd_update: p must have dtype in \(float32, float64\), got int64"):
        sgd_update(np.ones(3, np.int64), g32, None, opt, 0.1)
    with pytest.raises(TypeError, match=r"sgd_update: grad must be a numpy.ndarray, got list"):
        sgd_update(p32, [1.0, 1.0, 1.0], None, opt, 0.1)
    with pytest.raises(TypeError, match=r"sgd_update: buf must have dtype in \(float32, float64\)"):
        sgd_update(p32, g32, np.ones(3, np.float16), opt, 0.1)
    # A float64 gradient would otherwise turn the float32 parameter into float64 without a word.
    with pytest.raises(TypeError, match=r"sgd_update: grad.dtype \(=float64\) must equal p.dtype \(=float32"):
        sgd_update(p32, g32.astype(np.float64), None, opt, 0.1)
    with pytest.raises(TypeError, match=r"sgd_update: buf.dtype \(=float64\) must equal p.dtype"):
        sgd_update(p32, g32, np.ones(3), opt, 0.1)
    with pytest.raises(ValueError, match=r"sgd_update: grad must have shape \(3,\), got \(2,\)"):
        sgd_update(p32, g32[:2], None, opt, 0.1)
    with pytest.raises(ValueError, match=r"sgd_update: buf must have shape \(3,\), got \(1,\)"):
        sgd_update(p32, g32, g32[:1], opt, 0.1)
    with pytest.raises(ValueError, match="sgd_update: lr must be >= 0, got -0.1"):
        sgd_update(p32, g32, None, opt, -0.1)
    with pytest.raises(TypeError, match="sgd_update: lr must be a real number, got NoneType"):
        sgd_update(p32, g32, None, opt, None)


def test_state_buffer_must_be_float():
    rng = np.random.default_rng(9)
    params, grads = make(np.float32, rng), make(np.float32, rng)
    opt = SGD(0.1, momentum=0.9)
    _, state = sgd_step(params, grads, sgd_init(params), opt)
    key = BUFFER_PREFIX + "fc.weight"
    with pytest.raises(TypeError, match=r"sgd_step: state\['momentum_buffer/fc.weight'\] must have dtype in"):
        sgd_step(params, grads, {**state, key: state[key].astype(np.int32)}, opt)
