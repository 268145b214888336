"""Deliberately broken PyTorch backends: the suite's mutation proof.

Each class is a :class:`~saf_ref.testing.torch_backend.TorchBackend` that overrides **one** method with
a bug seen in real code. The suite must fail on every one of them, in the check named by its
``caught_by`` attribute, while the unmodified backend passes (``tests/testing/test_mutants.py``)::

    saf-ref check saf_ref.testing.mutants:ReluGradOneAtZero     # fails, in relu_vjp

Run ``python -m saf_ref.testing.mutants`` to print the table of which check catches each mutant and
after how many examples (it is kept in ``saf_ref/testing/MUTANTS.md``).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from saf_ref.testing.torch_backend import TorchBackend

__all__ = ["MUTANTS", "Mutant", "mutation_table"]


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


def mutation_table(examples: int = 30, *, seed: int = 0, dtype: str = "float32") -> str:
    """Run the suite on every mutant (with and without the boundary examples); return a markdown table.

    Columns: the mutant and its bug, the checks that fail, and the examples until the first failure of
    the expected check with the boundary examples first (the default) and with generated examples only.
    """
    from saf_ref.testing.suite import run_suite

    rows = [
        "| mutant (one overridden method) | bug | caught by | examples until caught | "
        "without boundary examples |",
        "|---|---|---|---|---|",
    ]
    for cls in MUTANTS:
        found = []
        for boundary in (True, False):
            report = run_suite(cls(dtype=dtype), examples=examples, seed=seed, boundary_examples=boundary)
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
    print(mutation_table(n))
