"""The backend protocol: what an implementation offers so that the oracle kit can check it against saf_ref.

A *backend* is any object with some of the methods of :class:`Backend` (a ``typing.Protocol``, so no
base class is needed). Every method takes and returns **NumPy arrays**: the backend converts to its own
tensors (PyTorch, JAX, CuPy, a C extension) and back. A backend may implement a subset: the suite skips a
check whose methods are missing, or that raise ``NotImplementedError`` (for every example it tries), and
says so in its report.

Attributes a backend declares (all optional, with the defaults of :func:`describe_backend`):

``name`` : str
    Shown in the report (default: the class name).
``device`` : str
    Where it computes, e.g. ``"cpu"`` or ``"cuda:0"`` (default ``"cpu"``).
``dtype`` : str
    The floating-point dtype of the network ops, ``"float32"`` (default) or ``"float64"``: the suite
    feeds arrays of this dtype and expects results of this dtype.
``unit_roundoff(dtype) -> float``
    The unit roundoff ``u`` its arithmetic achieves for a dtype name: ``2**-24`` for float32 (the
    default), ``2**-53`` for float64, ``2**-11`` for float32 matrix products on TF32 tensor cores.
    The error bounds of the suite scale with it (DESIGN.md, section 5).

Conventions shared with saf_ref (DESIGN.md): NCHW activations, OIHW convolution weights, bit 0 = least
significant bit of a stored word, codes in the smallest unsigned container (``uint8`` for 8-bit formats,
``uint16``, ``uint32``, ``uint64``), parameters keyed by torchvision ``state_dict`` names. Inputs must not
be modified.

Writing a backend takes a few lines per method; ``examples/my_backend/backend.py`` in the repository is a
complete third-party style example, and :class:`saf_ref.testing.torch_backend.TorchBackend` a complete
adapter of PyTorch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from saf_ref.bits.faultlist import FaultList

__all__ = [
    "Backend",
    "BackendInfo",
    "DEFAULT_ROUNDOFF",
    "ModelResult",
    "METHODS",
    "describe_backend",
    "has_method",
]

#: Unit roundoff of plain IEEE arithmetic per dtype name (half an ulp of 1).
DEFAULT_ROUNDOFF: dict[str, float] = {"float32": 2.0**-24, "float64": 2.0**-53}


class ModelResult(NamedTuple):
    """What :meth:`Backend.model_forward_backward` returns.

    Attributes
    ----------
    logits : ndarray, shape (N, num_classes)
    loss : ndarray, 0-d
        Mean softmax cross-entropy of ``logits`` against the labels.
    new_state : dict[str, ndarray]
        Batch-norm running statistics after the forward pass (``*.running_mean``, ``*.running_var``).
    grads : dict[str, ndarray]
        Gradient of ``loss`` with respect to every parameter the model was given (its weights).
    """

    logits: np.ndarray
    loss: np.ndarray
    new_state: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]


@runtime_checkable
class Backend(Protocol):
    """The methods an implementation under test may offer (all optional; see the module docstring).

    Every array argument and result is a ``numpy.ndarray``; float arrays of the network ops have the
    backend's ``dtype``.
    """

    name: str
    device: str
    dtype: str

    def unit_roundoff(self, dtype: str) -> float:
        """Unit roundoff achieved for ``dtype`` (``"float32"`` or ``"float64"``)."""

    # ---------------------------------------------------------------------------------------- bits
    def encode(self, format_name: str, x: np.ndarray) -> np.ndarray:
        """Round float16/32/64 values to a format; return its codes (PyTorch: ``x.to(dtype).view(int)``).

        ``format_name`` is one of ``float32``, ``float16``, ``bfloat16``, ``float8_e4m3fn``,
        ``float8_e5m2``; the codes have the format's unsigned container dtype and ``x.shape``.
        """

    def decode(self, format_name: str, codes: np.ndarray) -> np.ndarray:
        """Values of codes: float16 for ``float16``, float32 for ``float32``/``bfloat16``/``float8_*``."""

    def flip_by_uniform(
        self, codes: np.ndarray, uniform: np.ndarray, p: float, *, protected: int | None = None
    ) -> np.ndarray:
        """Flip bit ``j`` (LSB = 0) of word ``k`` iff ``uniform[k, j] < float32(p)``, unless protected.

        ``uniform`` is float32 of shape ``codes.shape + (nbits,)``; ``protected`` an integer bit mask.
        """

    def apply_faults(self, codes: np.ndarray, faults: FaultList, *, nbits: int) -> np.ndarray:
        """Apply a fault list (columns ``faults.index``, ``faults.bit``, ``faults.kind``) to a copy of codes.

        Flips first (XOR: a bit flipped twice is unchanged), then stuck-at-0 / stuck-at-1 bits.
        """

    def quantize(self, x: np.ndarray, config: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """Per-tensor fixed-point quantization of float32 ``x`` (saf_ref :class:`~saf_ref.bits.Quantizer`).

        ``config`` holds the keyword arguments of ``Quantizer`` (``nbits``, ``scheme``, ``code``,
        ``rounding``, ``clip``, ``max_abs``, ``margin``). Returns the codes and the context as a dict with
        the keys of :meth:`saf_ref.bits.QuantContext.to_dict`.
        """

    def dequantize(
        self, codes: np.ndarray, context: Mapping[str, Any], config: Mapping[str, Any]
    ) -> np.ndarray:
        """float32 values of quantized codes under a context (the inverse of :meth:`quantize`)."""

    def mx_encode(self, format_name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """OCP Microscaling (MX v1.0): blocks of 32 consecutive elements along the last axis of float32 or
        float64 ``x`` (its length a multiple of 32) -> ``(scales, elements)``.

        ``format_name`` is one of ``mxfp8_e4m3``, ``mxfp8_e5m2``, ``mxfp6_e2m3``, ``mxfp6_e3m2``, ``mxfp4``,
        ``mxint8``. ``scales``: uint8 E8M0 codes of shape ``x.shape[:-1] + (n // 32,)``; ``elements``: uint8
        element codes (the element's 8, 6 or 4 bits, unpacked) of shape ``x.shape``. Per block:
        ``shared = floor(log2 max|V|) - emax_elem``, clamped below at -127 (and -127 for a block of zeros);
        a NaN or an infinity in the block, or ``shared > 127``: scale ``0xFF``, elements 0; else scale
        ``shared + 127`` and ``P_i = V_i / 2**shared`` rounded once to nearest (ties to even), saturating
        at the largest element (MXINT8: ``k / 64``, ``|k| <= 127``). A backend without MX support may
        leave these methods out, or raise ``NotImplementedError`` for the formats it lacks: the checks are
        then reported as skipped (``not implemented``).
        """

    def mx_decode(self, format_name: str, scales: np.ndarray, elements: np.ndarray) -> np.ndarray:
        """float64 values ``2**(scale - 127) * P_i`` of MX blocks (the inverse layout of :meth:`mx_encode`;
        exact in float64); every value of a block whose scale is ``0xFF`` is NaN."""

    # ------------------------------------------------------------------------------------- protect
    def transform_forward(self, name: str, u: np.ndarray, *, scale: float) -> np.ndarray:
        """Weight transform ``w = a f(u / a)`` for ``name`` in identity, tanh, arctan, softsign, hardtanh."""

    def transform_vjp(self, name: str, u: np.ndarray, dw: np.ndarray, *, scale: float) -> np.ndarray:
        """Latent gradient ``du = f'(u / a) * dw``."""

    # ------------------------------------------------------------------------------------------ nn
    def conv2d_forward(
        self,
        x: np.ndarray,
        w: np.ndarray,
        b: np.ndarray | None,
        *,
        stride: tuple[int, int],
        padding: tuple[int, int],
    ) -> np.ndarray:
        """``torch.nn.functional.conv2d(x, w, b, stride, padding)``."""

    def conv2d_vjp(
        self,
        x: np.ndarray,
        w: np.ndarray,
        b: np.ndarray | None,
        dy: np.ndarray,
        *,
        stride: tuple[int, int],
        padding: tuple[int, int],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(dx, dw, db)`` of the convolution at ``(x, w, b)`` for the upstream gradient ``dy``."""

    def linear_forward(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        """``x @ w.T + b``."""

    def linear_vjp(
        self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, dy: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(dx, dw, db)``."""

    def batchnorm2d_forward(
        self,
        x: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray,
        running_mean: np.ndarray,
        running_var: np.ndarray,
        *,
        train: bool,
        momentum: float,
        eps: float,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(y, new_running_mean, new_running_var)`` with PyTorch's semantics (DESIGN.md, section 4)."""

    def batchnorm2d_vjp(
        self,
        x: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray,
        running_mean: np.ndarray,
        running_var: np.ndarray,
        dy: np.ndarray,
        *,
        train: bool,
        momentum: float,
        eps: float,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(dx, dweight, dbias)``."""

    def groupnorm_forward(
        self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, *, num_groups: int, eps: float
    ) -> np.ndarray:
        """``torch.nn.functional.group_norm(x, num_groups, weight, bias, eps)``: ``x`` of shape
        ``(N, C, ...)`` (rank 2 to 5), each sample normalised over its groups of ``C / num_groups``
        consecutive channels (biased variance), then the per-channel affine map."""

    def groupnorm_vjp(
        self,
        x: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray,
        dy: np.ndarray,
        *,
        num_groups: int,
        eps: float,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(dx, dweight, dbias)`` of group norm."""

    def relu_forward(self, x: np.ndarray) -> np.ndarray:
        """``torch.relu(x)`` (``relu(-0.0) = -0.0``, NaN passes)."""

    def relu_vjp(self, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """``dx = dy where x > 0 else 0`` (ReLU'(0) = 0)."""

    def maxpool2d_forward(
        self,
        x: np.ndarray,
        *,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
    ) -> np.ndarray:
        """``torch.nn.functional.max_pool2d``."""

    def maxpool2d_vjp(
        self,
        x: np.ndarray,
        dy: np.ndarray,
        *,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
    ) -> np.ndarray:
        """``dx`` of max pooling."""

    def global_avgpool_forward(self, x: np.ndarray) -> np.ndarray:
        """Mean over the spatial axes, shape (N, C)."""

    def global_avgpool_vjp(self, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """``dx`` of global average pooling."""

    def cross_entropy_forward(
        self, logits: np.ndarray, labels: np.ndarray, *, label_smoothing: float
    ) -> np.ndarray:
        """Mean softmax cross-entropy (0-d array of the logits' dtype); ``labels`` are int64."""

    def cross_entropy_vjp(
        self, logits: np.ndarray, labels: np.ndarray, dloss: float, *, label_smoothing: float
    ) -> np.ndarray:
        """Gradient with respect to the logits, scaled by ``dloss``."""

    # --------------------------------------------------------------------------------------- train
    def sgd(
        self,
        params: Mapping[str, np.ndarray],
        grads: Sequence[Mapping[str, np.ndarray]],
        *,
        lr: float,
        momentum: float,
        dampening: float,
        weight_decay: float,
        nesterov: bool,
    ) -> dict[str, np.ndarray]:
        """Parameters after ``len(grads)`` steps of ``torch.optim.SGD`` from a fresh optimizer state."""

    # --------------------------------------------------------------------------------------- model
    def model_forward_backward(
        self,
        arch: str,
        params: Mapping[str, np.ndarray],
        state: Mapping[str, np.ndarray],
        x: np.ndarray,
        labels: np.ndarray,
        *,
        train: bool,
    ) -> ModelResult:
        """Forward a ResNet given by a torchvision-named state dict, the mean cross-entropy, and backward.

        ``arch`` is ``"resnet20"``, ``"resnet18_cifar"`` or ``"resnet18"`` (see :mod:`saf_ref.nn.resnet`).
        The model computes with the weights it is given (as saf_ref's models do); the suite checks a
        weight transform by composing :meth:`transform_forward`, this method and :meth:`transform_vjp`.
        """


#: Every method of the protocol, in the order above (used to list what a backend implements).
METHODS: tuple[str, ...] = (
    "encode",
    "decode",
    "flip_by_uniform",
    "apply_faults",
    "quantize",
    "dequantize",
    "mx_encode",
    "mx_decode",
    "transform_forward",
    "transform_vjp",
    "conv2d_forward",
    "conv2d_vjp",
    "linear_forward",
    "linear_vjp",
    "batchnorm2d_forward",
    "batchnorm2d_vjp",
    "groupnorm_forward",
    "groupnorm_vjp",
    "relu_forward",
    "relu_vjp",
    "maxpool2d_forward",
    "maxpool2d_vjp",
    "global_avgpool_forward",
    "global_avgpool_vjp",
    "cross_entropy_forward",
    "cross_entropy_vjp",
    "sgd",
    "model_forward_backward",
)


class BackendInfo(NamedTuple):
    """A backend's declared attributes, with defaults filled in (see :func:`describe_backend`)."""

    name: str
    device: str
    dtype: np.dtype
    roundoff: float  # unit roundoff declared for ``dtype``


def has_method(backend: Any, method: str) -> bool:
    """Whether ``backend`` offers ``method`` (a callable attribute that is not None)."""
    return callable(getattr(backend, method, None))


def describe_backend(backend: Any) -> BackendInfo:
    """Read a backend's name, device, dtype and unit roundoff, with the defaults of the module docstring.

    Raises
    ------
    TypeError
        ``dtype`` is not float32 or float64, or ``unit_roundoff`` does not return a real number.
    ValueError
        The declared unit roundoff is not in ``(0, 1)``.
    """
    fn = "describe_backend"
    name = getattr(backend, "name", None) or type(backend).__name__
    device = str(getattr(backend, "device", None) or "cpu")
    raw = getattr(backend, "dtype", None) or "float32"
    try:
        dtype = np.dtype(str(raw).replace("torch.", ""))
    except TypeError:
        raise TypeError(f"{fn}: backend.dtype must be 'float32' or 'float64', got {raw!r}") from None
    if dtype.name not in DEFAULT_ROUNDOFF:
        raise TypeError(f"{fn}: backend.dtype must be 'float32' or 'float64', got {dtype.name!r}")
    u: Any = DEFAULT_ROUNDOFF[dtype.name]
    if has_method(backend, "unit_roundoff"):
        u = backend.unit_roundoff(dtype.name)
    if isinstance(u, bool) or not isinstance(u, (int, float, np.floating)):
        raise TypeError(f"{fn}: backend.unit_roundoff({dtype.name!r}) must return a float, got {u!r}")
    if not 0.0 < float(u) < 1.0:
        raise ValueError(f"{fn}: backend.unit_roundoff({dtype.name!r}) must be in (0, 1), got {u!r}")
    return BackendInfo(str(name), device, dtype, float(u))
