"""Weight transforms ``w = f(u)``: the network computes with ``w``, the optimizer updates the latent ``u``.

A *saturating* transform (tanh, arctan, softsign, hardtanh) maps any latent, even ``inf``, to a bounded
weight, so a bit error that blows up the stored latent only moves the weight to the edge of its range.
Each transform comes with its analytic derivative (for ``du = f'(u) * dw``) and an inverse (to turn
pretrained weights into latents).

Scaled forms ``f_a(u) = a * f(u / a)`` keep the slope 1 at the origin for every scale ``a > 0`` and
saturate at ``+-a * sup f``:

==========  ==========================  ==================================  ======================
name        ``f(x)``                    ``f'(x)``                           ``sup |f|`` (bound)
==========  ==========================  ==================================  ======================
identity    ``x``                       ``1``                               ``inf``
tanh        ``tanh(x)``                 ``1 - tanh(x)**2 = sech(x)**2``     ``1``
arctan      ``arctan(x)``               ``1 / (1 + x**2)``                  ``pi / 2``
softsign    ``x / (1 + |x|)``           ``1 / (1 + |x|)**2``                ``1``
hardtanh    ``clip(x, -1, 1)``          ``1 if |x| < 1 else 0``             ``1``
==========  ==========================  ==================================  ======================

Conventions shared by every method:

- **dtype.** Inputs are float32 or float64 ``numpy.ndarray`` s (0-d included); the output has the
  input's dtype and shape. Anything else is a ``TypeError``. Inputs are never mutated; outputs are new
  C-contiguous arrays.
- **Rounding.** tanh, arctan and softsign are computed in float64 and rounded once to the working dtype.
  For float32 the result is therefore the float64 value rounded to nearest-even, which does not depend on
  the CPU's SIMD kernels (NumPy's float64 kernels are within a few float64 ulps of the exact value, far
  below half a float32 ulp; only a float64 result within those few ulps of a float32 rounding midpoint
  could round differently, a probability of about 2**-27 per element). For float64 inputs the result is
  that of NumPy's float64 kernels, accurate to a few ulps. Every input is first copied into a
  C-contiguous float64 buffer, so a strided view gives bit for bit the result of its contiguous copy.
- **Symmetry.** Every transform is odd and every derivative even *by construction*: they are computed on
  ``|u|`` and the sign is put back with ``copysign``, so ``f(-u) == -f(u)`` bit for bit and
  ``f(-0.0) == -0.0``.
- **Infinities.** ``f(+-inf) = +-a * sup f`` for the saturating transforms (rounded to the working
  dtype: ``float32(pi / 2) = 1.5707964`` is half an ulp above ``pi / 2``) and ``+-inf`` for identity.
  A naive ``x / (1 + |x|)`` gives ``inf / inf = NaN``; softsign handles it explicitly. Derivatives at
  ``+-inf`` are 0 for the saturating transforms and 1 for identity.
- **NaN** propagates: ``f(NaN)``, ``f'(NaN)`` and ``f^{-1}(NaN)`` are NaN (the sign bit of the NaN is
  preserved by ``copysign``; the payload is not guaranteed). PyTorch's autograd differs at NaN (in
  2.13 on the CPU the vector-Jacobian product at a NaN latent passes ``dw`` through); the oracle kit
  lists this as a known divergence.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from saf_ref import validation

TRANSFORMS: tuple[str, ...] = ("identity", "tanh", "arctan", "softsign", "hardtanh")
_SATURATING = ("tanh", "arctan", "softsign", "hardtanh")


# ---------------------------------------------------------------------------------------------------
# Unit-scale kernels on x = |u| / a >= 0 (or NaN), in float64. The odd/even extension and the scale are
# applied by Transform, so each kernel is a one-liner that only has to be right for x >= 0.
# ---------------------------------------------------------------------------------------------------


def _tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x)  # tanh(inf) = 1 exactly


def _tanh_grad(x: np.ndarray) -> np.ndarray:
    # sech(x)**2 = (1 / cosh(x))**2. The textbook 1 - tanh(x)**2 cancels catastrophically once tanh(x)
    # rounds to 1 (x > ~19 in float64) and returns 0 instead of ~4e-17; this form is accurate to a few
    # ulps for every x >= 0. Squaring after the division underflows gradually (cosh(x)**2 would overflow
    # for x > ~355), cosh(inf) = inf gives exactly 0, and cosh(x) >= 1 keeps the result <= 1 (the
    # equivalent 4 t / (1 + t)**2 with t = exp(-2x) can round to 1 + 2**-52 at tiny x).
    # cosh overflows to inf for x > ~710 (faulty latents reach 1e38); 1 / inf = 0 is the right answer there.
    with np.errstate(over="ignore"):
        r = 1.0 / np.cosh(x)
    return r * r


def _tanh_inv(y: np.ndarray) -> np.ndarray:
    return np.arctanh(y)


def _arctan(x: np.ndarray) -> np.ndarray:
    return np.arctan(x)  # arctan(inf) = float64(pi / 2)


def _arctan_grad(x: np.ndarray) -> np.ndarray:
    # 1 / (1 + x**2) overflows x**2 for x > ~1e154 and returns 0 where the true value is still a
    # (subnormal) float64; for x > 1 use the equal r**2 / (1 + r**2) with r = 1/x, which underflows
    # gradually instead. Both branches are evaluated; errstate hides the harmless 1/0 at x = 0.
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        r = 1.0 / x
        return np.where(x <= 1.0, 1.0 / (1.0 + x * x), r * r / (1.0 + r * r))


def _arctan_inv(y: np.ndarray) -> np.ndarray:
    return np.tan(y)


def _softsign(x: np.ndarray) -> np.ndarray:
    # x / (1 + x) is inf / inf = NaN at x = inf: the limit is 1.
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(x), 1.0, x / (1.0 + x))


def _softsign_grad(x: np.ndarray) -> np.ndarray:
    # (1 / (1 + x))**2 rather than 1 / (1 + x)**2: squaring after the division underflows gradually
    # instead of overflowing to inf for x > ~1e154. At x = inf it is exactly 0.
    r = 1.0 / (1.0 + x)
    return r * r


def _softsign_inv(y: np.ndarray) -> np.ndarray:
    return y / (1.0 - y)  # 1 - y is exact for y in [0.5, 1] (Sterbenz), so no cancellation error


def _hardtanh_grad(x: np.ndarray) -> np.ndarray:
    # Strict inequality: the derivative is 0 at exactly |x| = 1, as in PyTorch's hardtanh backward.
    return np.where(np.isnan(x), np.nan, (x < 1.0).astype(np.float64))


_Kernel = Callable[[np.ndarray], np.ndarray]
# name -> (f, f', f^{-1}, sup f) for the smooth saturating transforms, all on x >= 0.
_SMOOTH: dict[str, tuple[_Kernel, _Kernel, _Kernel, float]] = {
    "tanh": (_tanh, _tanh_grad, _tanh_inv, 1.0),
    "arctan": (_arctan, _arctan_grad, _arctan_inv, math.pi / 2),
    "softsign": (_softsign, _softsign_grad, _softsign_inv, 1.0),
}


def _inverse_clip(sup: float, dtype: np.dtype) -> float:
    """The largest value of ``dtype`` strictly below the true ``sup f`` (1 or pi/2), as a float.

    Clipping ``|w| / a`` to it before the inverse keeps ``atanh``, ``tan`` and ``y / (1 - y)`` finite:
    float32 ``1 - 2**-24`` and float64 ``1 - 2**-53`` for 1. For pi/2: ``float64(pi/2)`` =
    1.5707963267948966 is already 6e-17 *below* the true pi/2 (tan of it is 1.6e16), while
    ``float32(pi/2)`` = 1.5707964 is 4e-8 *above* it (tan of it is negative), so float32 steps one ulp
    down, to 1.5707962 (tan of it is 1.3e7).
    """
    c = dtype.type(sup)
    # sup = 1 is exact, so its rounding is never below it; sup = math.pi / 2 is float64(pi/2) < pi/2,
    # so a rounding equal to it is below the true pi/2 and is kept.
    if float(c) > sup or (sup == 1.0 and float(c) == sup):
        c = np.nextafter(c, dtype.type(0))
    return float(c)


def _prepare(x: np.ndarray, name: str, fn: str) -> tuple[np.ndarray, np.dtype]:
    """Validate a float32/float64 array; return a C-contiguous float64 *copy* and the working dtype."""
    validation.check_float(x, name, fn)
    # Always a fresh contiguous buffer: never aliases the caller's array, and strided inputs run through
    # exactly the same (contiguous) NumPy kernel as their contiguous copies.
    return np.array(x, dtype=np.float64, order="C", copy=True), x.dtype


def _finish(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round a float64 result once to the working dtype (0-d results stay arrays)."""
    return np.asarray(y, dtype=np.float64).astype(dtype, copy=False)


@dataclass(frozen=True)
class Transform:
    """An elementwise weight transform ``w = a * f(u / a)`` with derivative and inverse.

    No single PyTorch module; the pieces are ``torch.tanh``, ``torch.atan``,
    ``torch.nn.functional.softsign`` and ``torch.nn.functional.hardtanh``.

    Parameters
    ----------
    name : str
        One of :data:`TRANSFORMS`: ``"identity"``, ``"tanh"``, ``"arctan"``, ``"softsign"``,
        ``"hardtanh"``.
    scale : float, default 1.0
        ``a > 0`` (finite). The weight saturates at ``+-a * sup f``; the slope at 0 stays 1. It has no
        effect on identity (``a * (u / a) = u``).

    Math
    ----
    ``w = a f(u / a)``, ``dw/du = f'(u / a)``, ``u = a f^{-1}(w / a)``; see the module table for ``f``.

    Notes
    -----
    All methods take float32/float64 arrays of any shape and return an array of the same dtype and shape,
    never mutating the input; see the module docstring for the rounding, infinity and NaN conventions.
    """

    name: str
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"Transform: name must be a str, got {validation.describe(self.name)}")
        validation.check_choice(self.name, "name", "Transform", TRANSFORMS)
        scale = validation.check_real(self.scale, "scale", "Transform")
        if not (math.isfinite(scale) and scale > 0.0):
            raise ValueError(f"Transform: scale must be a finite positive number, got {self.scale!r}")
        object.__setattr__(self, "scale", scale)  # store a plain float (the dataclass is frozen)

    @property
    def bound(self) -> float:
        """``sup |w|``: ``a`` for tanh/softsign/hardtanh, ``a * pi / 2`` for arctan, ``inf`` for identity.

        The working dtype's output can equal ``bound`` rounded to that dtype, which may exceed ``bound``
        by half an ulp (float32 arctan: ``float32(pi/2) > pi/2``).
        """
        if self.name == "identity":
            return math.inf
        return self.scale * (math.pi / 2 if self.name == "arctan" else 1.0)

    @property
    def saturating(self) -> bool:
        """Whether ``|f|`` is bounded (every transform except identity)."""
        return self.name in _SATURATING

    def _fn(self, method: str) -> str:
        return f"{self.name}.{method}"

    def forward(self, u: np.ndarray) -> np.ndarray:
        """The weight ``w = a f(u / a)`` (PyTorch: ``a * torch.tanh(u / a)`` etc.).

        Parameters
        ----------
        u : ndarray, float32 or float64, any shape
            Latent values; ``+-inf`` and NaN allowed.

        Returns
        -------
        w : ndarray, same dtype and shape as ``u``
            ``|w| <= bound`` (rounded to the dtype). identity returns a copy of ``u``; hardtanh is exact
            (``clip(u, -a, a)`` with ``a`` rounded to the dtype, no float64 scratch).
        """
        fn = self._fn("forward")
        if self.name == "identity":
            return np.array(validation.check_float(u, "u", fn), order="C", copy=True)
        if self.name == "hardtanh":
            validation.check_float(u, "u", fn)
            a = u.dtype.type(self.scale)
            # min(|u|, a) with the sign put back equals a * clip(u / a, -1, 1) exactly, without the
            # rounding of u / a * a; np.minimum propagates NaN.
            return np.asarray(np.copysign(np.minimum(np.abs(u), a), u), order="C")
        x, dtype = _prepare(u, "u", fn)
        f = _SMOOTH[self.name][0]
        with np.errstate(over="ignore"):  # |u| / a may overflow to inf for a < 1: f(inf) is the limit
            ax = np.abs(x) / self.scale
        return _finish(np.copysign(self.scale * f(ax), x), dtype)

    __call__ = forward

    def grad(self, u: np.ndarray) -> np.ndarray:
        """The elementwise derivative ``dw/du = f'(u / a)`` (PyTorch: autograd of :meth:`forward`).

        Parameters
        ----------
        u : ndarray, float32 or float64, any shape

        Returns
        -------
        dwdu : ndarray, same dtype and shape as ``u``
            In ``[0, 1]``; 0 at ``+-inf`` for the saturating transforms; NaN at NaN (identity included).
            hardtanh: 1 on ``|u| < a``, 0 on ``|u| >= a`` (0 at exactly ``|u| = a``, as PyTorch).

        Notes
        -----
        hardtanh compares ``|u|`` with the real ``a`` (the float64 truth), not with ``a`` rounded to the
        dtype. They differ only where that rounding is downward, at ``|u| = float32(a) < a``: 1 here, 0
        in PyTorch, whose float32 kernel compares with ``float32(a)`` (``a = 0.7``: ``u = 0.699999988``).
        """
        x, dtype = _prepare(u, "u", self._fn("grad"))
        return _finish(self._grad64(x), dtype)

    def vjp(self, u: np.ndarray, dw: np.ndarray) -> np.ndarray:
        """The latent gradient ``du = f'(u / a) * dw`` (PyTorch: ``torch.autograd.grad(w, u, dw)``).

        Parameters
        ----------
        u : ndarray, float32 or float64, shape S
        dw : ndarray, same dtype and shape S
            Gradient of the loss with respect to ``w = forward(u)``.

        Returns
        -------
        du : ndarray, dtype and shape of ``u``
            ``f'`` and the product are formed in float64 and rounded once.
        """
        fn = self._fn("vjp")
        x, dtype = _prepare(u, "u", fn)
        validation.check_float(dw, "dw", fn)
        validation.check_same_dtype(fn, u=u, dw=dw)
        validation.check_shape(dw, "dw", fn, u.shape)
        return _finish(self._grad64(x) * dw.astype(np.float64), dtype)

    def _grad64(self, x: np.ndarray) -> np.ndarray:
        """``f'(x / a)`` in float64 for a float64 array ``x`` (the derivative is even: use ``|x|``)."""
        with np.errstate(over="ignore"):  # |u| / a may overflow to inf for a < 1: f'(inf) is the limit
            ax = np.abs(x) / self.scale
        if self.name == "identity":
            return np.where(np.isnan(ax), np.nan, 1.0)
        if self.name == "hardtanh":
            return _hardtanh_grad(ax)
        return _SMOOTH[self.name][1](ax)

    def inverse(self, w: np.ndarray) -> np.ndarray:
        """A latent ``u`` with ``forward(u) ~= w``: ``u = a f^{-1}(w / a)``.

        Parameters
        ----------
        w : ndarray, float32 or float64, any shape
            Weights; any value is accepted (see Notes for values at or beyond the bound).

        Returns
        -------
        u : ndarray, same dtype and shape as ``w``
            Finite wherever ``w`` is not NaN, as long as the cap ``a * f^{-1}(m)`` of the Notes is finite
            in the dtype (it overflows to inf only for huge scales: float32 tanh ``a > 3.9e37``);
            identity: ``u = w``, a copy.

        Notes
        -----
        - **tanh, arctan, softsign**: ``|w| / a`` is first clipped to ``m``, the largest value of the
          working dtype strictly below ``sup f`` (float32: ``1 - 2**-24`` for tanh/softsign and
          ``1.5707962`` for arctan; float64: ``1 - 2**-53`` and ``float64(pi/2)``), so the result is
          finite: ``|u| <= a * f^{-1}(m)``, i.e. ``a * {8.66, 1.3e7, 1.7e7}`` in float32 and
          ``a * {18.7, 1.6e16, 9.0e15}`` in float64 for ``{tanh, arctan, softsign}``. Weights at or
          beyond the bound (``forward(+-inf)`` included) therefore map to that finite latent.
        - **hardtanh** has no inverse; this returns ``clip(w, -a, a)``, which is only a *right*
          inverse: ``forward(inverse(w)) == w`` for ``|w| <= a``, but ``inverse(forward(u)) != u``
          for ``|u| > a``.
        - **Round-trip tolerance** (documented contract, tested), with ``eps`` the dtype's machine
          epsilon (``2**-23`` or ``2**-52``) and ``|w| / a < m``:
          ``|forward(inverse(w)) - w| <= 2 eps |w|`` and
          ``|inverse(forward(u)) - u| <= 2 eps (|w| / f'(u / a) + |u|)`` with ``w = forward(u)``:
          the inverse amplifies the rounding of ``w`` by ``1 / f'``, which grows without bound as
          ``f`` saturates.
        """
        fn = self._fn("inverse")
        if self.name in ("identity", "hardtanh"):
            return self.forward(validation.check_float(w, "w", fn))
        y, dtype = _prepare(w, "w", fn)
        _, _, finv, sup = _SMOOTH[self.name]
        m = _inverse_clip(sup, dtype)
        with np.errstate(over="ignore"):  # |w| / a may overflow to inf; it is clipped to m anyway
            y_clipped = np.minimum(np.abs(y) / self.scale, m)  # np.minimum propagates NaN
        return _finish(np.copysign(self.scale * finv(y_clipped), y), dtype)


IDENTITY = Transform("identity")


def check_transform(value: str | Transform, name: str, fn: str) -> Transform:
    """``value`` as a :class:`Transform`: a name in :data:`TRANSFORMS` (scale 1) or a Transform itself.

    The validation of :func:`get_transform`, for a public entry point that takes a transform argument:
    its errors name ``fn`` and ``name`` (``"default_spec: transform must be one of ..."``), not
    ``get_transform``. TypeError for another type, ValueError for an unknown name.
    """
    if isinstance(value, Transform):
        return value
    if not isinstance(value, str):
        raise TypeError(
            f"{fn}: {name} must be a transform name or a Transform, got {validation.describe(value)}"
        )
    validation.check_choice(value, name, fn, TRANSFORMS)
    return Transform(value)


def get_transform(name_or_transform: str | Transform | None, *, scale: float | None = None) -> Transform:
    """Look up a transform by name (or pass a :class:`Transform` through).

    Parameters
    ----------
    name_or_transform : str, Transform or None
        A name in :data:`TRANSFORMS`, a ``Transform`` (returned unchanged), or ``None`` for identity.
    scale : float, optional
        The scale ``a`` for a name (default 1.0). Giving it together with a ``Transform`` is an error.

    Returns
    -------
    Transform
    """
    fn = "get_transform"
    if isinstance(name_or_transform, Transform):
        if scale is not None:
            raise ValueError(
                f"{fn}: scale must not be given with a Transform (it has scale={name_or_transform.scale}), "
                f"got scale={scale!r}"
            )
        return name_or_transform
    if name_or_transform is None:
        name_or_transform = "identity"
    if not isinstance(name_or_transform, str):
        raise TypeError(
            f"{fn}: name_or_transform must be a str, a Transform or None, got "
            f"{type(name_or_transform).__name__}"
        )
    validation.check_choice(name_or_transform, "name_or_transform", fn, TRANSFORMS)
    return Transform(name_or_transform, 1.0 if scale is None else scale)
