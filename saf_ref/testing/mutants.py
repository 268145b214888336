"""Deliberately broken backends: the suite's mutation proof, with and without PyTorch.

Each class in :data:`MUTANTS` is a :class:`~saf_ref.testing.torch_backend.TorchBackend` that overrides
**one** method with a bug seen in real code; each class in :data:`NUMPY_MUTANTS` does the same to the
independent NumPy backend (:class:`~saf_ref.testing.reference_backend.ReferenceBackend`), so that the
proof runs where PyTorch is not installed: the 13 bugs of the PyTorch mutants, and 6 more that only the
boundary tables catch (NaN kinds, multi-dimensional fault lists, quantizer option combinations, the float32
exp overflow edge, channel counts past a kernel's block, a forward pass at NaN latents). The suite must fail
on every one of them, in the check named by its ``caught_by`` attribute, while the unmodified backends
pass (``tests/testing/test_mutants.py``)::

    saf-ref check saf_ref.testing.mutants:ReluGradOneAtZero     # fails, in relu_vjp
    saf-ref check saf_ref.testing.mutants:NpReluGradOneAtZero   # the same bug without PyTorch

Run ``python -m saf_ref.testing.mutants`` to print the table of which check catches each mutant and
after how many examples (it is kept in ``saf_ref/testing/MUTANTS.md``).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from saf_ref.testing.reference_backend import ReferenceBackend
from saf_ref.testing.torch_backend import TorchBackend

__all__ = ["MUTANTS", "NUMPY_MUTANTS", "Mutant", "NumpyMutant", "mutation_table"]


class Mutant(TorchBackend):
    """Base of the broken backends: ``bug`` describes the mistake, ``caught_by`` the check that must fail."""

    bug: str = ""
    caught_by: str = ""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = f"{type(self).__name__} (mutant of {self.name})"


class BatchNormUnbiasedVariance(Mutant):
    bug = "batch norm normalises with the unbiased variance (divides by n - 1)"
    caught_by = "batchnorm2d_forward"

    def _t_batch_norm(self, x, weight, bias, running_mean, running_var, train, momentum, eps):
        if not train:
            return super()._t_batch_norm(x, weight, bias, running_mean, running_var, train, momentum, eps)
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=True)  # the bug: n - 1 also in the normalisation
        with self.torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mean)
            running_var.mul_(1 - momentum).add_(momentum * var)
        shape = (1, -1, 1, 1)
        return (x - mean.view(shape)) / self.torch.sqrt(var.view(shape) + eps) * weight.view(
            shape
        ) + bias.view(shape)


class ConvWeightGradFlipped(Mutant):
    bug = "conv2d weight gradient computed with the kernel flipped (convolution instead of correlation)"
    caught_by = "conv2d_vjp"

    def _t_conv2d(self, x, w, b, stride, padding):
        torch = self.torch
        stride, padding = tuple(stride), tuple(padding)

        class Conv(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, w, b):
                ctx.save_for_backward(x, w)
                ctx.has_bias = b is not None
                return torch.nn.functional.conv2d(x, w, b, stride=stride, padding=padding)

            @staticmethod
            def backward(ctx, dy):
                x, w = ctx.saved_tensors
                dx = torch.nn.grad.conv2d_input(x.shape, w, dy, stride=stride, padding=padding)
                dw = torch.nn.grad.conv2d_weight(x, w.shape, dy, stride=stride, padding=padding)
                db = dy.sum((0, 2, 3)) if ctx.has_bias else None
                return dx, dw.flip(-2, -1), db  # the bug: a hand-written backward flips the kernel

        return Conv.apply(x, w, b)


class Bfloat16Truncation(Mutant):
    bug = (
        "bfloat16 encoding truncates the float32 bits (drops the low 16) instead of rounding to nearest even"
    )
    caught_by = "encode[bfloat16]"

    def encode(self, format_name, x):
        if format_name != "bfloat16":
            return super().encode(format_name, x)
        bits = np.asarray(x, dtype=np.float32).view(np.uint32)  # (float64 inputs go through float32)
        return (bits >> 16).astype(np.uint16)


class SubnormalsFlushed(Mutant):
    bug = "subnormal codes decode to zero (flush-to-zero / denormals-are-zero)"
    caught_by = "decode[float16]"

    def decode(self, format_name, codes):
        values = super().decode(format_name, codes)
        tiny = {"float16": 2.0**-14, "bfloat16": 2.0**-126, "float8_e4m3fn": 2.0**-6, "float8_e5m2": 2.0**-14}
        if format_name in tiny:
            values = np.where(np.abs(values) < tiny[format_name], np.copysign(0, values), values).astype(
                values.dtype
            )
        return values


class NegativeZeroLost(Mutant):
    bug = "-0.0 encoded as +0.0 (a zero test that rebuilds the zero without its sign)"
    caught_by = "encode[float16]"

    def encode(self, format_name, x):
        x = np.where(x == 0, 0.0, x).astype(x.dtype)  # the bug: -0.0 == 0 is true
        return super().encode(format_name, x)


class BitIndexFromMsb(Mutant):
    bug = "flip_by_uniform counts bit indices from the most significant end (uniform[..., 0] is the MSB)"
    caught_by = "flip_by_uniform"

    def flip_by_uniform(self, codes, uniform, p, *, protected=None):
        reversed_uniform = np.ascontiguousarray(uniform[..., ::-1])
        return super().flip_by_uniform(codes, reversed_uniform, p, protected=protected)


class UniformLessEqual(Mutant):
    bug = "flip_by_uniform compares uniform <= p instead of uniform < p"
    caught_by = "flip_by_uniform"

    def flip_by_uniform(self, codes, uniform, p, *, protected=None):
        # uniform <= p is uniform < (the next float32 after p)
        p_next = float(np.nextafter(np.float32(p), np.float32(np.inf)))
        return super().flip_by_uniform(codes, uniform, p_next, protected=protected)


class ReluGradOneAtZero(Mutant):
    bug = "ReLU gradient 1 at x = 0 (mask x >= 0 instead of x > 0)"
    caught_by = "relu_vjp"

    def relu_vjp(self, x, dy):
        return np.where(x >= 0, dy, dy.dtype.type(0)).astype(dy.dtype)


class SgdDampenedMomentum(Mutant):
    bug = "SGD momentum in the dampened (EMA) form buf = mu * buf + (1 - mu) * g"
    caught_by = "sgd"

    def sgd(self, params, grads, *, lr, momentum, dampening, weight_decay, nesterov):
        torch = self.torch
        p = {k: self._t(v) for k, v in params.items()}
        buf = {k: torch.zeros_like(v) for k, v in p.items()}
        for g in grads:
            for k in p:
                d = self._t(g[k]) + weight_decay * p[k]
                if momentum:
                    buf[k] = momentum * buf[k] + (1 - momentum) * d  # the bug (PyTorch: mu * buf + g)
                    d = d + momentum * buf[k] if nesterov else buf[k]
                p[k] = p[k] - lr * d
        return {k: self._np(v) for k, v in p.items()}


class CrossEntropySummed(Mutant):
    bug = "cross-entropy summed over the batch instead of averaged"
    caught_by = "cross_entropy_forward"

    def _t_cross_entropy(self, logits, labels, label_smoothing):
        return self.F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="sum")


class TanhGradMissingSquare(Mutant):
    bug = "tanh transform derivative computed as 1 - tanh(u) (the square is missing)"
    caught_by = "transform_vjp[tanh]"

    def _t_transform(self, name, u, scale):
        if name != "tanh":
            return super()._t_transform(name, u, scale)
        torch = self.torch

        class Tanh(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                y = torch.tanh(x)
                ctx.save_for_backward(y)
                return y

            @staticmethod
            def backward(ctx, dy):
                (y,) = ctx.saved_tensors
                return dy * (1 - y)  # the bug: 1 - y * y

        return Tanh.apply(u) if scale == 1.0 else scale * Tanh.apply(u / scale)


class QuantizerRoundHalfUp(Mutant):
    bug = "quantizer rounds half away from zero (floor(x + 0.5)) instead of half to even"
    caught_by = "quantize"

    def _t_quant_round(self, s):
        return self.torch.floor(s + 0.5)


class FaultListFlipsAsSet(Mutant):
    bug = "a FaultList applied as a set of flips: a bit listed twice is flipped once instead of cancelling"
    caught_by = "apply_faults"

    def apply_faults(self, codes, faults, *, nbits):
        codes = np.asarray(codes)
        flat = self._int64(codes.reshape(-1))
        kind = np.array(faults.kind, dtype=object)
        for k in ("flip", "stuck0", "stuck1"):
            sel = kind == k
            if sel.any():
                # the bug: duplicates collapsed (parity=False) for the flips too
                mask = self._bit_masks(
                    np.asarray(faults.index)[sel], np.asarray(faults.bit)[sel], flat.numel(), parity=False
                )
                flat = flat ^ mask if k == "flip" else (flat & ~mask if k == "stuck0" else flat | mask)
        return self._back(flat, codes).reshape(codes.shape)


#: Every mutant, in the order of the table.
MUTANTS: tuple[type[Mutant], ...] = (
    BatchNormUnbiasedVariance,
    ConvWeightGradFlipped,
    Bfloat16Truncation,
    SubnormalsFlushed,
    NegativeZeroLost,
    BitIndexFromMsb,
    UniformLessEqual,
    ReluGradOneAtZero,
    SgdDampenedMomentum,
    CrossEntropySummed,
    TanhGradMissingSquare,
    QuantizerRoundHalfUp,
    FaultListFlipsAsSet,
)


# =========================================================================================================
# The same bugs (and six more) in the independent NumPy backend: the proof without PyTorch
# =========================================================================================================
class NumpyMutant(ReferenceBackend):
    """Base of the broken NumPy backends: ``bug`` says what is wrong, ``caught_by`` the check that fails."""

    bug: str = ""
    caught_by: str = ""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = f"{type(self).__name__} (mutant of {self.name})"


class NpBatchNormUnbiasedVariance(NumpyMutant):
    bug = BatchNormUnbiasedVariance.bug
    caught_by = "batchnorm2d_forward"

    def batchnorm2d_forward(self, x, weight, bias, running_mean, running_var, *, train, momentum, eps):
        y, m, v = super().batchnorm2d_forward(
            x, weight, bias, running_mean, running_var, train=train, momentum=momentum, eps=eps
        )
        if train:  # the bug: normalise with var * n / (n - 1)
            n = x.size // x.shape[1]
            mean = x.mean(axis=(0, 2, 3))[None, :, None, None]
            var = x.var(axis=(0, 2, 3), ddof=1)[None, :, None, None]
            y = (x - mean) / np.sqrt(var + eps) * weight[None, :, None, None] + bias[None, :, None, None]
            y = y.astype(x.dtype) if n > 1 else y
        return y, m, v


class NpConvWeightGradFlipped(NumpyMutant):
    bug = ConvWeightGradFlipped.bug
    caught_by = "conv2d_vjp"

    def conv2d_vjp(self, x, w, b, dy, *, stride, padding):
        dx, dw, db = super().conv2d_vjp(x, w, b, dy, stride=stride, padding=padding)
        return dx, np.ascontiguousarray(dw[:, :, ::-1, ::-1]), db  # the bug


class NpBfloat16Truncation(NumpyMutant):
    bug = Bfloat16Truncation.bug
    caught_by = "encode[bfloat16]"

    def encode(self, format_name, x):
        if format_name != "bfloat16":
            return super().encode(format_name, x)
        with np.errstate(invalid="ignore", over="ignore"):
            bits = np.asarray(x, dtype=np.float32).view(np.uint32)
        return (bits >> 16).astype(np.uint16)  # the bug: the low 16 bits dropped


class NpSubnormalsFlushed(NumpyMutant):
    bug = SubnormalsFlushed.bug
    caught_by = "decode[float16]"

    def decode(self, format_name, codes):
        values = super().decode(format_name, codes)
        tiny = {"float16": 2.0**-14, "bfloat16": 2.0**-126, "float8_e4m3fn": 2.0**-6, "float8_e5m2": 2.0**-14}
        if format_name in tiny:  # the bug
            values = np.where(np.abs(values) < tiny[format_name], np.copysign(0, values), values)
        return values.astype(values.dtype)


class NpNegativeZeroLost(NumpyMutant):
    bug = NegativeZeroLost.bug
    caught_by = "encode[float16]"

    def encode(self, format_name, x):
        x = np.where(x == 0, 0.0, x).astype(x.dtype)  # the bug: -0.0 == 0 is true
        return super().encode(format_name, x)


class NpBitIndexFromMsb(NumpyMutant):
    bug = BitIndexFromMsb.bug
    caught_by = "flip_by_uniform"

    def flip_by_uniform(self, codes, uniform, p, *, protected=None):
        return super().flip_by_uniform(
            codes, np.ascontiguousarray(uniform[..., ::-1]), p, protected=protected
        )


class NpUniformLessEqual(NumpyMutant):
    bug = UniformLessEqual.bug
    caught_by = "flip_by_uniform"

    def flip_by_uniform(self, codes, uniform, p, *, protected=None):
        p_next = float(np.nextafter(np.float32(p), np.float32(np.inf)))  # uniform <= p
        return super().flip_by_uniform(codes, uniform, p_next, protected=protected)


class NpReluGradOneAtZero(NumpyMutant):
    bug = ReluGradOneAtZero.bug
    caught_by = "relu_vjp"

    def relu_vjp(self, x, dy):
        return np.where(x >= 0, dy, dy.dtype.type(0)).astype(dy.dtype)


class NpSgdDampenedMomentum(NumpyMutant):
    bug = SgdDampenedMomentum.bug
    caught_by = "sgd"

    def sgd(self, params, grads, *, lr, momentum, dampening, weight_decay, nesterov):
        out = {}
        for k, p in params.items():
            buf = np.zeros_like(p)
            for g in grads:
                d = g[k] + weight_decay * p
                if momentum:
                    buf = momentum * buf + (1 - momentum) * d  # the bug (PyTorch: mu * buf + g)
                    d = d + momentum * buf if nesterov else buf
                p = p - lr * d
            out[k] = np.asarray(p, dtype=params[k].dtype)
        return out


class NpCrossEntropySummed(NumpyMutant):
    bug = CrossEntropySummed.bug
    caught_by = "cross_entropy_forward"

    def cross_entropy_forward(self, logits, labels, *, label_smoothing):
        mean = super().cross_entropy_forward(logits, labels, label_smoothing=label_smoothing)
        return np.asarray(mean * logits.shape[0], dtype=logits.dtype)  # the bug


class NpTanhGradMissingSquare(NumpyMutant):
    bug = TanhGradMissingSquare.bug
    caught_by = "transform_vjp[tanh]"

    def transform_vjp(self, name, u, dw, *, scale):
        if name != "tanh":
            return super().transform_vjp(name, u, dw, scale=scale)
        t = np.tanh(np.abs(u.astype(np.float64)) / scale)
        return ((1 - t) * dw.astype(np.float64)).astype(u.dtype)  # the bug: 1 - t * t


class NpQuantizerRoundHalfUp(NumpyMutant):
    bug = QuantizerRoundHalfUp.bug
    caught_by = "quantize"

    def _quant_round(self, s):
        return np.floor(s + np.float32(0.5))


class NpFaultListFlipsAsSet(NumpyMutant):
    bug = FaultListFlipsAsSet.bug
    caught_by = "apply_faults"

    def apply_faults(self, codes, faults, *, nbits):
        flat = np.array(codes, dtype=np.uint64).reshape(-1)
        records = list(zip(faults.index, faults.bit, faults.kind, strict=True))
        flips = {(int(i), int(b)) for i, b, k in records if k == "flip"}  # the bug: duplicates collapse
        for i, b in flips:
            flat[i] ^= np.uint64(1) << np.uint64(b)
        for want in ("stuck0", "stuck1"):
            for i, b, k in records:
                one = np.uint64(1) << np.uint64(int(b))
                if k == want:
                    flat[int(i)] = flat[int(i)] & ~one if k == "stuck0" else flat[int(i)] | one
        return flat.astype(codes.dtype).reshape(np.shape(codes))


# --- six bugs that escaped the suite before its boundary tables ---------------------------------------
class NpNanPayloadTruncated(NumpyMutant):
    bug = (
        "float32 -> bfloat16 by rounding the bits (add 0x7FFF plus the odd bit, shift): a NaN whose payload "
        "is only in the low 16 bits becomes infinity, and a signalling NaN with a carry turns into a number"
    )
    caught_by = "encode[bfloat16]"

    def encode(self, format_name, x):
        if format_name != "bfloat16" or x.dtype != np.float32:
            return super().encode(format_name, x)
        bits = x.view(np.uint32).astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # the bug: no NaN test before rounding
        return rounded.astype(np.uint16)


class NpFaultIndexInMemoryOrder(NumpyMutant):
    bug = "FaultList indices applied in memory order (ravel(order='K')) instead of the array's C order"
    caught_by = "apply_faults"

    def apply_faults(self, codes, faults, *, nbits):
        c = np.asarray(codes)
        order = "F" if (c.ndim > 1 and c.flags.f_contiguous and not c.flags.c_contiguous) else "C"
        flat = c.ravel(order="K").astype(np.uint64)  # the bug: memory order
        out = ReferenceBackend.apply_faults(self, flat, faults, nbits=nbits)
        return out.astype(c.dtype).reshape(c.shape, order=order)


class NpQuantizerClipIgnoresMargin(NumpyMutant):
    bug = "symmetric quantizer with clip: the margin added after the cap: q = min(max abs(x), clip) + margin"
    caught_by = "quantize"

    def quantize(self, x, config):
        cfg = dict(config)
        if not (cfg["scheme"] == "symmetric" and cfg["clip"] is not None and cfg["margin"]):
            return super().quantize(x, config)
        q64 = min(float(np.abs(x).max()), cfg["clip"]) + cfg["margin"]  # the bug: margin past the cap
        return super().quantize(x, dict(cfg, clip=None, max_abs=None, margin=q64 - float(np.abs(x).max())))


class NpSoftmaxWithoutShift(NumpyMutant):
    bug = (
        "cross-entropy as log(sum(exp(z))) - z[y] without subtracting max(z): float32 exp overflows past 88.7"
    )
    caught_by = "cross_entropy_forward"

    def cross_entropy_forward(self, logits, labels, *, label_smoothing):
        k = logits.shape[1]
        with np.errstate(over="ignore", invalid="ignore"):
            lse = np.log(np.exp(logits).sum(axis=1, keepdims=True))  # the bug
        logp = logits - lse
        picked = np.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
        per = -(1 - label_smoothing) * picked - label_smoothing / k * logp.sum(axis=1)
        return np.asarray(per.mean(), dtype=logits.dtype)


class NpConvChannelRemainderDropped(NumpyMutant):
    bug = "a conv2d kernel blocked by 16 input channels that drops the remainder block (channels 17.., 33..)"
    caught_by = "conv2d_forward"

    def conv2d_forward(self, x, w, b, *, stride, padding):
        c = x.shape[1]
        kept = c if c <= 16 else c - c % 16  # the bug: the last partial block is skipped
        return super().conv2d_forward(x[:, :kept], w[:, :kept], b, stride=stride, padding=padding)


class NpTransformNanToZero(NumpyMutant):
    bug = "the forward transform maps a NaN latent to 0 (np.nan_to_num): a corrupted weight that looks valid"
    caught_by = "transform_forward[tanh]"

    def transform_forward(self, name, u, *, scale):
        return np.nan_to_num(
            super().transform_forward(name, u, scale=scale), nan=0.0, posinf=np.inf, neginf=-np.inf
        )


#: Every NumPy mutant: the 13 bugs of :data:`MUTANTS` in the same order, then six boundary-class bugs.
NUMPY_MUTANTS: tuple[type[NumpyMutant], ...] = (
    NpBatchNormUnbiasedVariance,
    NpConvWeightGradFlipped,
    NpBfloat16Truncation,
    NpSubnormalsFlushed,
    NpNegativeZeroLost,
    NpBitIndexFromMsb,
    NpUniformLessEqual,
    NpReluGradOneAtZero,
    NpSgdDampenedMomentum,
    NpCrossEntropySummed,
    NpTanhGradMissingSquare,
    NpQuantizerRoundHalfUp,
    NpFaultListFlipsAsSet,
    NpNanPayloadTruncated,
    NpFaultIndexInMemoryOrder,
    NpQuantizerClipIgnoresMargin,
    NpSoftmaxWithoutShift,
    NpConvChannelRemainderDropped,
    NpTransformNanToZero,
)


def mutation_table(
    examples: int = 30,
    *,
    seed: int = 0,
    dtype: str = "float32",
    mutants: tuple[type, ...] = MUTANTS,
    expected_only: bool = False,
) -> str:
    """Run the suite on every mutant (with and without the boundary examples); return a markdown table.

    Columns: the mutant and its bug, the checks that fail, and the examples until the first failure of
    the expected check with the boundary examples first (the default) and with generated examples only.
    ``expected_only`` runs the expected check alone (no "also" list; much faster).
    """
    from saf_ref.testing.suite import run_suite

    rows = [
        "| mutant (one overridden method) | bug | caught by | examples until caught | "
        "without boundary examples |",
        "|---|---|---|---|---|",
    ]
    for cls in mutants:
        found = []
        for boundary in (True, False):
            only = [cls.caught_by] if expected_only else None
            report = run_suite(
                cls(dtype=dtype), examples=examples, seed=seed, boundary_examples=boundary, only=only
            )
            r = report.result(cls.caught_by)
            found.append((report, r))
        report, r = found[0]
        others = [f.name for f in report.failed if f.name != cls.caught_by]
        caught = f"`{cls.caught_by}`" + (f" (also: {', '.join(f'`{o}`' for o in others)})" if others else "")
        counts = [
            str(x.first_failure) if x.status == "fail" else f"not caught in {x.examples}" for _, x in found
        ]
        rows.append(f"| `{cls.__name__}` | {cls.bug} | {caught} | {counts[0]} | {counts[1]} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # pragma: no cover - a documentation generator
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    which = sys.argv[2] if len(sys.argv) > 2 else "torch"
    numpy = which == "numpy"
    print(mutation_table(n, mutants=NUMPY_MUTANTS if numpy else MUTANTS, expected_only=numpy))
