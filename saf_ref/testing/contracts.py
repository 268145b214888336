"""Tolerance contracts (DESIGN.md, section 5) as assertion functions, one per tier.

=============  ==========================================================  ==============================
tier           passes when                                                 used for
=============  ==========================================================  ==============================
exact          the bits are equal (signed zeros count; NaN payloads only   codecs, fault injection,
               when asked)                                                 quantizer codes, ReLU, max pool
ulp            ``|got - ref64| <= n * ulp_u(max(|ref64|, magnitude))``     elementwise float ops
               ``+ atol``                                                  (transforms, the SGD step)
dot            ``|got - ref64| <= c * gamma_K(u) * (|x| . |w|)``           conv / linear forward and VJPs,
                                                                           pooling
relative       ``max|got - ref64| <= factor * (((u + u64) / 2**-24) * E32``  composites: batch norm,
               ``+ (u + u64) * scale)``, ``E32 = max|saf_ref_float32 - ref64|``  cross-entropy, whole models
=============  ==========================================================  ==============================

``u`` is the unit roundoff the backend declares (``2**-24`` for float32, ``2**-53`` for float64,
``2**-11`` for TF32), ``ulp_u(x) = 2u * 2**floor(log2 |x|)`` (so ``ulp_u`` is the float32 ulp for
``u = 2**-24``), floored at the spacing of the dtype's subnormals, and ``gamma_K(u) = K u / (1 - K u)``
(Higham). ``ref64`` is saf_ref's result on the same inputs in float64, and ``u64 = 2**-53`` its unit
roundoff.

**The reference has its own error.** Every tier measures ``|got - ref64|``, not the error against the
exact result, so by the triangle inequality it must allow the backend's error *plus* the reference's. For
a float32 backend the reference's share is ``2**-29`` of the allowance and changes nothing; for a float64
backend it is as large as the backend's own. The dot tier therefore uses ``c = 1 + u64 / u``, and the
relative tier adds the reference's allowance at ``u64`` (``u + u64`` in place of ``u``): saf_ref-float64 is
held to the same contract as the backend, so ``|got - ref64| <= |got - exact| + |ref64 - exact|`` is
within the sum of the two allowances. In a one-off measurement against saf_ref run in 80-bit
``np.longdouble`` (x86-64; 450 hypothesis ResNet cases), saf_ref-float64's own error reached 8 to 40
times ``(u64 / 2**-24) * E32`` on some tensors: at float64 the reference's error is not negligible.

**Sampling the float32 error.** ``E32`` stands for how sensitive the computation is to rounding; one
float32 run is one sample of it. On a tensor with a handful of elements (the two batch-norm weights of a
width-2 layer) every sample can be small by luck: saf_ref-float32 was 5 ulps off where PyTorch float32,
PyTorch float64 and saf_ref-float64 were 33, 50 and 40 times that (scaled by ``u``). A float32 backend
is compared with ``E32`` as measured (the float32 tier is not widened); a float64 backend is held to a
bound ``2**29`` times tighter, where such luck fails correct implementations, so the whole-model check
adds more samples for it: saf_ref-float32 on equivalent networks whose hidden channels are permuted (see
:mod:`saf_ref.testing.checks.models`), which changes the order of the sums over those channels and so of
every rounding downstream. With them, in the same measurement, saf_ref-float64 stayed within 9 and
PyTorch-float64 within 21 times ``(u64 / 2**-24) * E32``, against an allowance of 64.

Every function returns the worst ratio ``error / bound`` it saw (0 for exact agreement; at most 1 when it
passes) together with the *known divergences* it accepted, and raises :class:`ContractFailure` (an
``AssertionError``) otherwise. A failure message names the tensor and the element, shows got and
expected, the bound and its ingredients, and how many elements fail; the suite appends how to reproduce
it.

Known divergences are documented differences that are not bugs (see :data:`KNOWN_DIVERGENCES`). A check
passes an ``explain`` callback that, given the mask of mismatching elements, returns ``{name: mask}`` of
those it can attribute to a known divergence; they are counted and reported, not failed. NaN payloads
(and the sign of a NaN) are such a divergence unless ``nan_payloads="strict"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from saf_ref.testing.tolerance import dot_bound, gamma

__all__ = [
    "ContractFailure",
    "KNOWN_DIVERGENCES",
    "NAN_POLICIES",
    "U32",
    "U64",
    "assert_dot_bound",
    "assert_exact",
    "assert_relative",
    "assert_ulp",
    "ulp",
]

U32 = 2.0**-24
#: unit roundoff of the float64 reference
U64 = 2.0**-53
NAN_POLICIES = ("report", "strict")

#: The documented divergences the suite recognises: name -> what it is. None of them is a bug.
KNOWN_DIVERGENCES: dict[str, str] = {
    "nan-payload": (
        "both results are NaN but their bits differ (payload or sign); IEEE 754 leaves NaN payloads to "
        "the implementation (PyTorch turns every float32 NaN into bfloat16 0xFFFF; saf_ref writes the "
        "canonical quiet NaN of the input's sign). Checked bit for bit with --nan-payloads strict."
    ),
    "e4m3fn-overflow": (
        "float8_e4m3fn has no infinity: an overflowing value (or +-inf) becomes NaN in IEEE-style "
        "conversion (saf_ref overflow='ieee', ml_dtypes, OCP non-saturating mode) but +-448 in PyTorch's "
        "saturating cast. The result matches the other policy; pick the one to check against with "
        "--e4m3-overflow."
    ),
    "narrowing-via-float32": (
        "a float64 input is rounded to float32 first and then to the narrow format (PyTorch, and "
        "ml_dtypes before 0.7, do this for float16, bfloat16 and float8), a double rounding that differs "
        "from saf_ref's single rounding when the float32 value lands on a tie (1 + 2**-8 + 2**-30 -> "
        "bfloat16 1.0 instead of 1 + 2**-7). Pick the reference with --narrowing."
    ),
    "softsign-infinity": (
        "softsign(+-inf): torch.nn.functional.softsign computes x / (1 + |x|) = inf / inf = NaN; "
        "saf_ref returns the limit +-a, so that a latent corrupted to infinity still gives a bounded weight."
    ),
    "nan-latent-gradient": (
        "the gradient at a NaN latent: saf_ref propagates NaN; PyTorch's autograd passes dw through "
        "(identity, hardtanh) or returns 0."
    ),
    "hardtanh-bound-gradient": (
        "hardtanh's gradient at |u| = fl(a), the number of the latents' dtype nearest the scale a, when a "
        "itself is no such number and fl(a) < a (a = 0.7 in float32): saf_ref compares |u| with the real "
        "a, finds it inside and passes dw on; PyTorch and JAX compare with fl(a), find it on the bound and "
        "return 0."
    ),
    "flush-to-zero": (
        "a result of +-0 where saf_ref's (or an intermediate such as u / a, or a float64 -> float32 "
        "conversion) is below the smallest normal number: the flush-to-zero and denormals-are-zero modes "
        "that XLA sets on the CPU (JAX) and that GPU kernels often use. saf_ref, NumPy and PyTorch's CPU "
        "kernels keep subnormals (gradual underflow)."
    ),
    "relu-nan-gradient": (
        "the ReLU gradient at a NaN input: saf_ref and PyTorch pass dy through (the mask is x <= 0, false "
        "for NaN); JAX's jax.nn.relu multiplies by x > 0 and returns 0. The derivative at NaN is undefined."
    ),
    "relu-negative-zero": (
        "relu(-0.0): saf_ref and PyTorch return -0.0 (x < 0 is false); max(x, 0) implementations "
        "return +0.0. The values are equal; only the sign of zero differs."
    ),
}

Explain = Callable[[np.ndarray], Mapping[str, np.ndarray]]


class ContractFailure(AssertionError):
    """A result outside its contract; the message says where, by how much, and against which bound."""


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------
def _index(flat: int | np.integer, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A flat index as a tuple of Python ints (prints as ``(1, 2)``; ``()`` for a 0-d array)."""
    return tuple(int(i) for i in np.unravel_index(int(flat), shape)) if shape else ()


def _bits(a: np.ndarray) -> np.ndarray:
    """The raw bits of a float or integer array as unsigned integers of the same width."""
    if a.dtype.kind == "u":
        return a
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def _check_same_layout(got: Any, expected: np.ndarray, what: str) -> np.ndarray:
    """``got`` as an array with the dtype and shape of ``expected`` (else a ContractFailure)."""
    if not isinstance(got, np.ndarray):
        if isinstance(got, np.generic):
            got = np.asarray(got)
        else:
            raise ContractFailure(f"{what}: expected a numpy.ndarray, got {type(got).__name__}")
    if got.dtype != expected.dtype:
        raise ContractFailure(f"{what}: got dtype {got.dtype}, expected {expected.dtype}")
    if got.shape != expected.shape:
        raise ContractFailure(f"{what}: got shape {got.shape}, expected {expected.shape}")
    return got


def _apply_explain(bad: np.ndarray, explain: Explain | None, divergences: dict[str, int]) -> np.ndarray:
    """Remove the mismatches a known divergence explains (counting them); return those left."""
    if explain is None or not bad.any():
        return bad
    left = bad.copy()
    for name, mask in explain(bad).items():
        mask = np.asarray(mask, dtype=bool) & left
        if mask.any():
            divergences[name] = divergences.get(name, 0) + int(mask.sum())
            left &= ~mask
    return left


def _fmt_value(v: Any) -> str:
    """A float or integer for a message: ``repr`` of the Python scalar."""
    return repr(v.item() if isinstance(v, np.generic) else v)


def _describe_element(a: np.ndarray, idx: tuple[int, ...], decode: Callable | None) -> str:
    """``0x3f80 (1.0)`` for a code, ``1.0 (0x3f800000)`` for a float."""
    v = a[idx]
    width = 2 * a.dtype.itemsize
    if a.dtype.kind == "u":
        text = f"0x{int(v):0{width}x}"
        if decode is not None:
            text += f" ({_fmt_value(decode(np.asarray(a[idx]).reshape(1))[0])})"
        return text
    if a.dtype.kind == "f":
        return f"{_fmt_value(v)} (0x{int(_bits(np.asarray(v))):0{width}x})"
    return _fmt_value(v)


# ---------------------------------------------------------------------------------------------------------
# exact
# ---------------------------------------------------------------------------------------------------------
def assert_exact(
    got: Any,
    expected: np.ndarray,
    *,
    what: str,
    is_nan: Callable[[np.ndarray], np.ndarray] | None = None,
    decode: Callable[[np.ndarray], np.ndarray] | None = None,
    inputs: Mapping[str, np.ndarray] | None = None,
    explain: Explain | None = None,
    nan_payloads: str = "report",
) -> tuple[float, dict[str, int]]:
    """Bit-exact agreement: every element's bits equal (so ``-0.0 != +0.0``).

    Parameters
    ----------
    got : ndarray
        The backend's result; must have the dtype and shape of ``expected``.
    expected : ndarray
        saf_ref's result: floats (compared by their bits) or unsigned codes.
    what : str
        Names the quantity in messages, e.g. ``"encode[bfloat16](x float32)"``.
    is_nan : callable, optional
        Classifies codes as NaN (e.g. ``fmt.is_nan``); floats are classified with ``np.isnan``.
    decode : callable, optional
        Turns codes into values for the message.
    inputs : dict[str, ndarray], optional
        Input arrays of the same shape, shown for the failing element.
    explain : callable, optional
        Known divergences (see the module docstring).
    nan_payloads : {"report", "strict"}
        ``"report"``: NaN against NaN with different bits is the known divergence ``nan-payload``;
        ``"strict"``: it is a failure.

    Returns
    -------
    (0.0, divergences)
        ``divergences`` maps a known divergence to the number of elements it explained.
    """
    if nan_payloads not in NAN_POLICIES:
        raise ValueError(f"assert_exact: nan_payloads must be one of {NAN_POLICIES}, got {nan_payloads!r}")
    expected = np.asarray(expected)
    got = _check_same_layout(got, expected, what)
    differ = _bits(got) != _bits(expected)
    divergences: dict[str, int] = {}
    nan_got = nan_expected = None
    if expected.dtype.kind == "f":
        nan_got, nan_expected = np.isnan(got), np.isnan(expected)
    elif is_nan is not None:
        nan_got, nan_expected = is_nan(got), is_nan(expected)
    if nan_got is not None and nan_expected is not None and nan_payloads == "report":
        payload = differ & nan_got & nan_expected
        if payload.any():
            divergences["nan-payload"] = int(payload.sum())
            differ &= ~payload
    differ = _apply_explain(differ, explain, divergences)
    if differ.any():
        idx = _index(np.argmax(differ), expected.shape)
        shown = "".join(
            f", {name} = {_describe_element(np.asarray(a), idx, None)}" for name, a in (inputs or {}).items()
        )
        raise ContractFailure(
            f"{what}: not bit-exact at index {idx}: got {_describe_element(got, idx, decode)}, expected "
            f"{_describe_element(expected, idx, decode)}{shown}; {int(differ.sum())} of {differ.size} "
            f"elements differ (contract: exact bits, signed zeros count)"
        )
    return 0.0, divergences


# ---------------------------------------------------------------------------------------------------------
# Shared by the tolerance tiers
# ---------------------------------------------------------------------------------------------------------
def _nonfinite_first(
    got: np.ndarray, ref: np.ndarray, what: str, explain: Explain | None, divergences: dict[str, int]
) -> np.ndarray:
    """Where ``ref`` is not finite, ``got`` must be the same infinity or a NaN for a NaN.

    Returns the mask of finite reference elements (the ones the tolerance applies to).
    """
    finite = np.isfinite(ref)
    with np.errstate(invalid="ignore"):
        same = (got == ref) | (np.isnan(got) & np.isnan(ref))
    bad = _apply_explain(~finite & ~same, explain, divergences)
    if bad.any():
        idx = _index(np.argmax(bad), ref.shape)
        raise ContractFailure(
            f"{what}: at index {idx} got {_fmt_value(got[idx])} but the reference is {_fmt_value(ref[idx])} "
            f"(non-finite references must be matched exactly); {int(bad.sum())} such elements"
        )
    return finite


def _worst(err: np.ndarray, bound: np.ndarray, mask: np.ndarray) -> tuple[float, np.ndarray]:
    """Ratios ``err / bound`` on ``mask`` (inf where the bound is 0 and the error is not; 0 off the mask)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, err / bound)
    ratio = np.where(mask, np.nan_to_num(ratio, nan=np.inf), 0.0)
    return (float(ratio.max()) if ratio.size else 0.0), ratio


def ulp(x: np.ndarray, *, u: float, dtype: Any) -> np.ndarray:
    """``ulp_u(x) = 2u * 2**floor(log2 |x|)``, floored at the subnormal spacing ``2u * tiny(dtype)``.

    For ``u`` the dtype's own unit roundoff this is the usual ulp (the spacing of the dtype at ``|x|``):
    float32 ``ulp(1) = 2**-23``. A larger declared ``u`` (TF32) widens it in proportion.
    """
    tiny = float(np.finfo(np.dtype(dtype)).tiny)
    a = np.maximum(np.abs(np.asarray(x, dtype=np.float64)), tiny)
    a = np.where(np.isfinite(a), a, np.finfo(np.float64).max)
    _, e = np.frexp(a)  # a = m * 2**e with m in [0.5, 1): floor(log2 a) = e - 1
    return np.ldexp(u, e)  # 2u * 2**(e - 1)


# ---------------------------------------------------------------------------------------------------------
# ulp
# ---------------------------------------------------------------------------------------------------------
def assert_ulp(
    got: Any,
    ref: np.ndarray,
    *,
    n: float,
    u: float,
    what: str,
    magnitude: np.ndarray | None = None,
    atol: np.ndarray | float = 0.0,
    inputs: Mapping[str, np.ndarray] | None = None,
    explain: Explain | None = None,
) -> tuple[float, dict[str, int]]:
    """Elementwise error within ``n`` ulps: ``|got - ref| <= n * ulp_u(max(|ref|, magnitude)) + atol``.

    Parameters
    ----------
    got : ndarray
        The backend's result (float32 or float64); its dtype defines the subnormal floor of ``ulp_u``.
    ref : ndarray of float64
        saf_ref's float64 result on the same inputs (its dtype may differ from ``got``'s).
    n : float
        Number of ulps allowed (roughly the number of roundings in the operation).
    u : float
        The backend's unit roundoff.
    magnitude : ndarray, optional
        A scale for the ulp when the operation cancels (e.g. ``|p| + lr |g|`` for an SGD step): the error
        of ``a - b`` is relative to ``|a| + |b|``, not to the small difference.
    atol : float or ndarray
        An absolute allowance (documented by each check, e.g. underflowed gradients).
    inputs, explain
        As in :func:`assert_exact`.

    Returns
    -------
    (worst ratio, divergences)
    """
    got = np.asarray(got)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise ContractFailure(f"{what}: got shape {got.shape}, expected {ref.shape}")
    if got.dtype.kind != "f":
        raise ContractFailure(f"{what}: got dtype {got.dtype}, expected a float dtype")
    g = got.astype(np.float64)
    divergences: dict[str, int] = {}
    finite = _nonfinite_first(g, ref, what, explain, divergences)
    scale = np.abs(ref) if magnitude is None else np.maximum(np.abs(ref), np.asarray(magnitude, np.float64))
    bound = n * ulp(np.where(finite, scale, 0.0), u=u, dtype=got.dtype) + atol
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(finite, np.abs(g - ref), 0.0)
    err = np.where(finite & np.isnan(err), np.inf, err)  # a NaN where the reference is finite
    _, ratio = _worst(err, np.broadcast_to(bound, err.shape), finite)
    bad = _apply_explain(ratio > 1.0, explain, divergences)
    if bad.any():
        r = np.where(bad, ratio, -1.0)
        idx = _index(np.argmax(r), ref.shape)
        b = np.broadcast_to(bound, err.shape)[idx]
        shown = "".join(f", {k} = {_fmt_value(np.asarray(a)[idx])}" for k, a in (inputs or {}).items())
        raise ContractFailure(
            f"{what}: |got - ref64| exceeds {n:g} ulp at index {idx}: got {_fmt_value(got[idx])}, ref "
            f"{_fmt_value(ref[idx])}, |diff| = {err[idx]:.3e} > bound {b:.3e} ({r[idx]:.3g} x the bound; "
            f"u = {u:.3e}){shown}; {int(bad.sum())} of {bad.size} elements fail"
        )
    # the elements above the bound were all explained: the worst ratio is that of the others
    return float(np.where(ratio > 1.0, 0.0, ratio).max(initial=0.0)), divergences


# ---------------------------------------------------------------------------------------------------------
# dot
# ---------------------------------------------------------------------------------------------------------
def assert_dot_bound(
    got: Any,
    ref: np.ndarray,
    magnitude: np.ndarray,
    k: int,
    *,
    u: float,
    what: str,
    c: float = 1.0,
) -> float:
    """Dot-product error bound ``|got - ref| <= c * gamma_K(u) * magnitude`` elementwise.

    Parameters
    ----------
    got : ndarray
        The backend's result, of the backend's dtype.
    ref : ndarray of float64
        saf_ref's float64 result on the same inputs.
    magnitude : ndarray of float64
        ``|x| . |w|`` per output: the float64 operation applied to absolute values.
    k : int
        Terms accumulated into one output (products and additions).
    u : float
        The backend's declared unit roundoff.
    c : float
        Safety factor: 1 gives Higham's rigorous bound for any summation order (with or without FMA);
        the suite uses ``1 + 2**-53 / u`` to absorb the float64 reference's own rounding.

    Returns
    -------
    float
        The worst ratio ``|got - ref| / bound``.
    """
    got = np.asarray(got)
    ref = np.asarray(ref, dtype=np.float64)
    magnitude = np.asarray(magnitude, dtype=np.float64)
    if not (got.shape == ref.shape == magnitude.shape):
        raise ContractFailure(
            f"{what}: shapes differ: got {got.shape}, ref {ref.shape}, magnitude {magnitude.shape}"
        )
    if got.dtype.kind != "f":
        raise ContractFailure(f"{what}: got dtype {got.dtype}, expected a float dtype")
    g = got.astype(np.float64)
    finite = _nonfinite_first(g, ref, what, None, {})
    bound = dot_bound(magnitude, k, u=u, c=c)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(finite, np.abs(g - ref), 0.0)
    err = np.where(finite & np.isnan(err), np.inf, err)
    worst, ratio = _worst(err, bound, finite)
    bad = ratio > 1.0
    if bad.any():
        idx = _index(np.argmax(ratio), ref.shape)
        raise ContractFailure(
            f"{what}: |got - ref64| exceeds c*gamma_K(u)*(|x|.|w|) at index {idx}: got "
            f"{_fmt_value(got[idx])}, ref {_fmt_value(ref[idx])}, |diff| = {err[idx]:.3e} > bound "
            f"{bound[idx]:.3e} ({ratio[idx]:.3g} x the bound; c = {c:g}, K = {k}, u = {u:.3e}, "
            f"gamma_K = {gamma(k, u):.3e}, |x|.|w| = {magnitude[idx]:.3e}); {int(bad.sum())} of {bad.size} "
            f"elements fail"
        )
    return worst


# ---------------------------------------------------------------------------------------------------------
# relative to saf_ref float32
# ---------------------------------------------------------------------------------------------------------
def assert_relative(
    got: Any,
    ref: np.ndarray,
    ours32: np.ndarray | Sequence[np.ndarray],
    *,
    u: float,
    what: str,
    factor: float = 32.0,
    scale: float | None = None,
    ref_u: float = U64,
) -> float:
    """Composite accuracy: the backend's error is within ``factor`` times saf_ref-float32's own error.

    Parameters
    ----------
    got : ndarray
        The backend's result, of the backend's dtype.
    ref : ndarray of float64
        saf_ref's float64 result on the same (float32-representable) inputs.
    ours32 : ndarray of float32, or a sequence of them
        saf_ref's float32 result on the same inputs; several results of equivalent float32 computations
        (e.g. with the batch in another order, so that every sum is taken in another order) sample the
        spread of float32 rounding better than one, and ``E32`` is then the largest of their errors.
    u : float
        The backend's declared unit roundoff (scales the allowance: a float64 backend must be
        ``2**29`` times closer than float32).
    factor : float
        How much worse than saf_ref-float32 (scaled by ``u / 2**-24``) the backend may be.
    scale : float, optional
        The magnitude of the computation for the floor term (default ``max|ref|``): the allowance
        never drops below ``factor * u * scale``, so an exact float32 result by luck does not demand
        an exact backend.
    ref_u : float
        Unit roundoff of the reference ``ref`` (``2**-53``: saf_ref in float64). The reference is held
        to the same contract at ``ref_u``, and its allowance is added (see the module docstring); 0
        treats the reference as exact.

    Math
    ----
    ``E32 = max|ours32 - ref|`` (normwise, over the tensor and over the float32 results) and the check is
    ``max|got - ref| <= factor * (((u + ref_u) / 2**-24) * E32 + (u + ref_u) * scale)``: the backend's
    allowance ``factor * ((u / 2**-24) * E32 + u * scale)`` plus the same allowance of the reference at
    ``ref_u``, since ``|got - ref| <= |got - exact| + |ref - exact|``. For a float32 backend the second
    term is ``2**-29`` of the first; for a float64 backend it doubles the allowance.

    Returns
    -------
    float
        ``max|got - ref|`` divided by the allowance.
    """
    got = np.asarray(got)
    ref = np.asarray(ref, dtype=np.float64)
    samples = [ours32] if isinstance(ours32, np.ndarray) or np.isscalar(ours32) else list(ours32)
    ours_all = [np.asarray(o, dtype=np.float64) for o in samples]
    ours = ours_all[0]
    if not (got.shape == ref.shape and all(o.shape == ref.shape for o in ours_all)):
        raise ContractFailure(
            f"{what}: shapes differ: got {got.shape}, ref {ref.shape}, saf_ref float32 {ours.shape}"
        )
    if got.dtype.kind != "f":
        raise ContractFailure(f"{what}: got dtype {got.dtype}, expected a float dtype")
    g = got.astype(np.float64)
    finite = _nonfinite_first(g, ref, what, None, {})
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(finite, np.abs(g - ref), 0.0)
        err32 = [np.where(finite, np.abs(o - ref), 0.0) for o in ours_all]
    err = np.where(finite & np.isnan(err), np.inf, err)
    e32 = max(float(np.nan_to_num(e, nan=0.0, posinf=0.0).max(initial=0.0)) for e in err32)
    if scale is None:
        scale = float(np.abs(np.where(finite, ref, 0.0)).max(initial=0.0))
    if not (math.isfinite(ref_u) and ref_u >= 0):
        raise ValueError(f"assert_relative: ref_u must be a finite number >= 0, got {ref_u!r}")
    u_both = u + ref_u  # the backend's allowance plus the reference's (triangle inequality)
    allowed = factor * ((u_both / U32) * e32 + u_both * scale)
    worst_err = float(err.max(initial=0.0))
    ratio = 0.0 if worst_err == 0.0 else (worst_err / allowed if allowed > 0 else np.inf)
    if ratio > 1.0:
        idx = _index(np.argmax(err), ref.shape)
        raise ContractFailure(
            f"{what}: error against float64 too large at index {idx}: got {_fmt_value(got[idx])}, ref64 "
            f"{_fmt_value(ref[idx])}, saf_ref float32 {_fmt_value(ours[idx])}; max|got - ref64| = "
            f"{worst_err:.3e} > allowed {allowed:.3e} ({ratio:.3g} x; allowed = {factor:g} * (((u + u_ref)/"
            f"2**-24) * E32 + (u + u_ref) * scale) with E32 = max|saf_ref_float32 - ref64| = {e32:.3e}, "
            f"u = {u:.3e}, u_ref = {ref_u:.3e}, scale = {scale:.3e}); {int((err > allowed).sum())} of "
            f"{err.size} elements exceed it"
        )
    return ratio
