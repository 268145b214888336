"""2-D convolution (PyTorch ``torch.nn.functional.conv2d``): forward, backward and a VJP wrapper.

Layout is NCHW for activations and OIHW for weights, as in PyTorch. Dilation and groups are not
supported (no network in saf_ref needs them); only ``stride`` and zero ``padding``.

Every path computes a convolution as matrix products over *columns*: for each output position the
``C*kh*kw`` input values its window reads (*im2col*), so that ``y = w.reshape(O, C*kh*kw) @ cols``,
``dw = dy @ cols.T`` and, for the input gradient, either a second convolution or the adjoint of im2col
(*col2im*). The loops of :mod:`saf_ref.nn.naive` (``conv2d_naive``, ``conv2d_backward_naive``) are the
specification; three paths make it fast, chosen by the shape alone (never by the machine):

1. **Stride 1** (the 3x3 convolutions of a ResNet but the downsampling ones), when each padding is
   below its kernel size and the layer is not both wide and small (``_uses_grid``). The padded input
   is stored once per call in a *grid*: one flat row per channel, images one after the other, each
   image row followed by ``pw`` zeros and each image by ``ph`` zero rows (one zero border serves as
   the right padding of a row and the left padding of the next). In this layout the input under
   kernel offset ``(i, j)`` for a run of output positions is one contiguous slice of every channel's
   row, shifted by ``i*Wg + j``, so the columns of a chunk of images are ``kh*kw`` plain slice copies
   and the product comes out on the same grid (the few positions that fall on the zero border are
   computed and dropped). The input gradient of a stride-1 convolution is itself a stride-1
   convolution of ``dy`` with the flipped, transposed kernel (a *transposed convolution*), and ``dy``
   stored on a grid of the same geometry lines up with the forward columns for ``dw``: no col2im and
   no wide ``w.T @ dy`` product.
2. **1x1, no padding** (the downsampling shortcuts): forward, one matrix product per image on its
   (strided) pixels, straight into the output; backward as path 3.
3. **Everything else** (strided 3x3, the 7x7 stem, odd paddings): classic im2col from the zero-padded
   input and col2im for ``dx``.

Paths 1 and 3 work on chunks of whole images (about ``_CHUNK_COLUMNS`` output positions each) so that
the column matrix stays a few MB, in a scratch buffer reused across chunks and calls, and each chunk's
product goes straight into the output. BLAS runs on one thread in these loops (``_run_chunks``: two
spin-waiting BLAS threads were slower than one). The chunk size depends only on the shapes, every
output element is one BLAS dot product over the same ``k`` in every chunking, and the ``dw`` sum is
accumulated chunk after chunk in a fixed order, so results do not depend on the number of threads.

Measured (``benchmarks/bench_conv.py``, one thread, process CPU time, on a busy 2-core machine), forward
+ backward against the single-product im2col/col2im code this replaced: ResNet-20 stride-1 layers
(batch 128) 1.4-2.4x faster, 1x1 1.6x, the ResNet-18 7x7 stem 1.6x; the ratios to PyTorch are in the
README (about 1.2x on ResNet-18 shapes and 1.6x on ResNet-20 shapes, float32).

For the models there are two more entry points with the same products (so the same bits):
``conv2d_forward_fused`` runs a caller's in-place ``epilogue`` on each chunk of output images right
after it is written (evaluation-mode batch norm and ReLU, while the chunk is in the cache), and
``conv2d_inference`` reads its input from, and writes its output to, a :class:`GridBatch`, the grid of
the next layer, so that an inference pass keeps its activations in the grid layout from layer to layer
(no transposes, no grid copies; a stride-1 product's non-output positions land exactly on the next
grid's padding and are zeroed).

All arithmetic stays in the input dtype: a float32 call allocates no float64 array. Every matrix
product is an explicit ``np.matmul`` call (no ``@``), so that ``benchmarks/bench_gemm.py`` can record
them all and time them apart (the products of a ResNet-20 pass, through NumPy's BLAS, take about torch's
whole inference pass).

Caches keep references to the caller's arrays (``x_padded`` *is* ``x`` when there is no padding, and a
read-only view into the grid on the stride-1 path). Arrays are treated as immutable: do not modify an
input between the forward and the backward call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from saf_ref import determinism, validation

__all__ = [
    "Conv2dCache",
    "Conv2dGrads",
    "GridBatch",
    "conv2d_backward",
    "conv2d_backward_unchecked",
    "conv2d_forward",
    "conv2d_forward_fused",
    "conv2d_forward_unchecked",
    "conv2d_inference",
    "conv2d_vjp",
    "grid_batch",
]


class Conv2dCache(NamedTuple):
    """What :func:`conv2d_backward` needs from the forward pass.

    Attributes
    ----------
    x_padded : ndarray, shape (N, C, H + 2*ph, W + 2*pw)
        The zero-padded input (the input itself when the padding is zero).
    w : ndarray, shape (O, C, kh, kw)
        The weights.
    has_bias : bool
        Whether the forward pass added a bias (then the backward pass returns ``db``).
    stride : tuple[int, int]
        ``(sh, sw)``.
    padding : tuple[int, int]
        ``(ph, pw)``.
    grid : ndarray or None
        On the stride-1 path, the padded input in the flat layout that path computes on (shape
        ``(C, N*(H + ph)*(W + pw) + ...)``, see ``_to_grid``); ``x_padded`` is then a read-only view of
        it. None on the other paths.
    """

    x_padded: np.ndarray
    w: np.ndarray
    has_bias: bool
    stride: tuple[int, int]
    padding: tuple[int, int]
    grid: np.ndarray | None = None


class Conv2dGrads(NamedTuple):
    """Gradients of a scalar loss with respect to the inputs of :func:`conv2d_forward`.

    Attributes
    ----------
    dx : ndarray, shape (N, C, H, W)
    dw : ndarray, shape (O, C, kh, kw)
    db : ndarray of shape (O,), or None
        ``None`` when the forward pass had no bias.
    """

    dx: np.ndarray
    dw: np.ndarray
    db: np.ndarray | None


def check_pair(value, name: str, fn: str, *, low: int) -> tuple[int, int]:
    """Turn an int or a pair of ints (each ``>= low``) into ``(height, width)`` values."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{fn}: {name} must be an int or a pair of ints, got {value!r}")
        return (
            validation.check_int(value[0], f"{name}[0]", fn, low=low),
            validation.check_int(value[1], f"{name}[1]", fn, low=low),
        )
    v = validation.check_int(value, name, fn, low=low)
    return (v, v)


def check_nonempty(x: np.ndarray, name: str, fn: str) -> None:
    """Require every dimension of ``x`` to be at least 1."""
    for axis, size in enumerate(x.shape):
        validation.check_int(size, f"{name}.shape[{axis}]", fn, low=1)


def output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output length along one axis: ``floor((size + 2*pad - kernel) / stride) + 1`` (PyTorch's rule)."""
    return (size + 2 * pad - kernel) // stride + 1


def _check_fits(fn: str, x_shape, kernel: tuple[int, int], padding: tuple[int, int]) -> None:
    """Require the padded input to be at least as large as the kernel (so the output is non-empty)."""
    for axis, label in ((0, "height"), (1, "width")):
        padded = x_shape[2 + axis] + 2 * padding[axis]
        if padded < kernel[axis]:
            raise ValueError(
                f"{fn}: the padded input {label} (={padded}, x.shape[{2 + axis}] + 2*padding) must be at "
                f"least the kernel {label} (={kernel[axis]})"
            )


def pad_spatial(x: np.ndarray, padding: tuple[int, int], value: float = 0.0) -> np.ndarray:
    """Pad the two spatial axes of an NCHW array with ``value``; return ``x`` itself when no padding."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


#: Output positions per chunk of images (at least one image per chunk): about 2048 keeps the column
#: matrix of every ResNet layer at 0.3-5 MB and the matrix products as fast as on the whole batch
#: (1024 to 8192 measured: within 5% of each other up to 4096, 10-20% slower at 8192).
_CHUNK_COLUMNS = 2048

#: ``epilogue(y_chunk, start, stop)``: an in-place elementwise step a caller fuses into a forward pass. It
#: runs on each chunk of images ``y[start:stop]`` right after the chunk is written, while it is still in
#: the cache (a model's batch norm and ReLU in evaluation mode), or ``None``.
Epilogue = Callable[[np.ndarray, int, int], None] | None


class Scratch:
    """Reusable 1-D buffers, one per slot name, that grow to the largest size asked for.

    Their contents are overwritten before use; reusing them saves the page faults that a fresh
    multi-MB allocation costs on every call (``_thread_scratch``: one per thread).
    """

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def get(self, slot: str, size: int, dtype: np.dtype) -> np.ndarray:
        """A 1-D array of ``size`` elements of ``dtype`` (uninitialised)."""
        nbytes = size * dtype.itemsize
        buf = self.buffers.get(slot)
        if buf is None or buf.nbytes < nbytes:
            buf = self.buffers[slot] = np.empty(nbytes, np.uint8)
        return buf[:nbytes].view(dtype)


_local = threading.local()


def _thread_scratch() -> Scratch:
    """The calling thread's scratch buffers."""
    if not hasattr(_local, "scratch"):
        _local.scratch = Scratch()
    return _local.scratch


def scratch_buffer(slot: str, size: int, dtype: np.dtype) -> np.ndarray:
    """A reusable 1-D array of ``size`` elements of ``dtype`` from the calling thread's scratch."""
    return _thread_scratch().get(slot, size, dtype)


def _chunks(n: int, per_image: int) -> list[tuple[int, int]]:
    """Image ranges ``(start, stop)`` of about ``_CHUNK_COLUMNS`` output positions each."""
    step = max(1, min(n, -(-_CHUNK_COLUMNS // per_image)))
    return [(start, min(start + step, n)) for start in range(0, n, step)]


def _run_chunks(task: Callable[[int, int, Scratch], Any], chunks: list[tuple[int, int]]) -> list:
    """``[task(start, stop, scratch) for each chunk]``, in chunk order, with BLAS on one thread.

    Many mid-sized products split over BLAS threads spin-wait at every product: on the 2-core machine
    of the benchmarks, shared with other jobs, two BLAS threads ran these convolutions 3-6x *slower*
    than one (single runs up to 16x). So where NumPy's BLAS may use several threads it is pinned to
    one for the loop (through the bundled OpenBLAS's own setter: a few microseconds, no allocation),
    and two threads are never slower than one. (Spreading the chunks, which are independent, over a
    pool of worker threads instead gained 0-22% wall clock on that machine, and made memory use depend
    on the order the workers started in; not worth it there.)
    """
    scratch = _thread_scratch()
    threads = determinism.bundled_openblas_threads()
    if threads is None or threads <= 1:
        return [task(start, stop, scratch) for start, stop in chunks]
    with determinism.blas_threads_pinned(method="openblas"):
        return [task(start, stop, scratch) for start, stop in chunks]


# --------------------------------------------------------------------------------------------------
# Path 1: stride 1, on the grid layout
# --------------------------------------------------------------------------------------------------


def _uses_grid(x_shape, w_shape, stride, padding) -> bool:
    """Whether the grid path applies (stride 1, each padding below its kernel size) and pays.

    The grid computes ``(H + ph)(W + pw)`` positions per image for ``Ho*Wo`` outputs. Its cheap
    columns win where copying dominates (few output channels), its wasted products lose where the
    products dominate (many channels, small images). Measured forward + backward, float32 and
    float64 alike: ResNet-20's 16-64 channels and ResNet-18's 64ch@32x32 and 128ch@16x16 run 10-35%
    faster on the grid, 256ch@8x8 5-10% and 512ch@4x4 15-20% slower. The rule: extra positions
    times output channels at most 32 (those cases give 4, 16, 17 against 69 and 287).
    """
    (_, _, h, w), (o, _, kh, kw), (ph, pw) = x_shape, w_shape, padding
    if stride != (1, 1) or ph >= kh or pw >= kw:
        return False
    outputs = (h + 2 * ph - kh + 1) * (w + 2 * pw - kw + 1)
    return ((h + ph) * (w + pw) / outputs - 1) * o <= 32


def _to_grid(
    x: np.ndarray, padding: tuple[int, int], kernel: tuple[int, int], slot: str | None = None
) -> np.ndarray:
    """Copy an NCHW batch into the grid layout, shape ``(C, N*Hg*Wg + (kh-1)*Wg + kw-1)``.

    ``Hg = H + ph`` and ``Wg = W + pw``; pixel ``(n, c, h, w)`` goes to ``grid[c, lead + n*Hg*Wg +
    h*Wg + w]`` with ``lead = ph*Wg + pw``, and every other entry is zero. Then the padded input
    ``xp[n, c, a, b]`` is ``grid[c, n*Hg*Wg + a*Wg + b]`` for every ``a < H + 2*ph``, ``b < W + 2*pw``
    (an index past the end of a row runs into the zero border at the start of the next, which is the
    padding it stands for), so output ``(p, q)`` of image ``n`` reads kernel offset ``(i, j)`` at
    ``grid[c, n*Hg*Wg + p*Wg + q + i*Wg + j]``. The ``(kh-1)*Wg + kw-1`` trailing zeros keep the reads
    of the last image in bounds.

    With a ``slot`` name the grid lives in that scratch buffer (for a grid used only within one call).
    """
    n, c, h, w = x.shape
    (ph, pw), (kh, kw) = padding, kernel
    hg, wg = h + ph, w + pw
    size = n * hg * wg
    shape = (c, size + (kh - 1) * wg + kw - 1)
    if slot is None:
        grid = np.empty(shape, dtype=x.dtype)
    else:  # reused memory: no page faults
        grid = scratch_buffer(slot, shape[0] * shape[1], x.dtype).reshape(shape)
    lead = ph * wg + pw
    images = grid[:, lead : lead + size].reshape(c, n, hg, wg)
    images[:, :, :h, :w] = x.transpose(1, 0, 2, 3)
    # Only the zeros are written apart (not the whole grid first): about a tenth of it.
    grid[:, :lead] = 0
    images[:, :, :h, w:] = 0
    images[:, :, h:] = 0
    grid[:, lead + size :] = 0
    return grid


def _padded_view(grid: np.ndarray, x_shape, padding: tuple[int, int]) -> np.ndarray:
    """The zero-padded input ``(N, C, H + 2*ph, W + 2*pw)`` as a read-only view of its grid (no copy).

    Neighbouring rows overlap in memory, on zeros only (see :func:`_to_grid`).
    """
    n, c, h, w = x_shape
    ph, pw = padding
    hg, wg, item = h + ph, w + pw, grid.itemsize
    return as_strided(
        grid,
        shape=(n, c, h + 2 * ph, w + 2 * pw),
        strides=(hg * wg * item, grid.strides[0], wg * item, item),
        writeable=False,
    )


def _grid_columns(grid: np.ndarray, start: int, row: int, cols: np.ndarray) -> np.ndarray:
    """Fill ``cols[c, i, j, t] = grid[c, start + i*row + j + t]`` (one slice copy per kernel offset);
    return it as a matrix ``(C*kh*kw, length)`` whose rows are ordered like ``w.reshape(O, C*kh*kw)``
    (the order of the im2col path, so that both sum each output's terms in the same order)."""
    c, kh, kw, length = cols.shape
    for i in range(kh):
        for j in range(kw):
            offset = start + i * row + j
            cols[:, i, j] = grid[:, offset : offset + length]
    return cols.reshape(c * kh * kw, length)


def _grid_conv(
    grid: np.ndarray, wmat: np.ndarray, kernel, grid_hw, out: np.ndarray, epilogue: Epilogue = None
) -> None:
    """Stride-1 convolution of a grid into the NCHW array ``out`` (every element written).

    ``out[n, o, p, q] = sum_{c, i, j} wmat[o, (c*kh + i)*kw + j] * grid[c, n*S + (p + i)*Wg + q + j]``
    with ``S = Hg*Wg``, chunk by chunk: one matrix product gives a chunk's output on the grid, and its
    ``(Ho, Wo)`` corner of each image is copied into ``out`` (then ``epilogue`` runs on it, if given).
    """
    (kh, kw), (hg, wg) = kernel, grid_hw
    n, o, ho, wo = out.shape
    c, k, per_image = grid.shape[0], wmat.shape[1], hg * wg

    def chunk(start: int, stop: int, scratch: Scratch) -> None:
        length = (stop - start) * per_image
        cols = scratch.get("cols", k * length, grid.dtype).reshape(c, kh, kw, length)
        cols = _grid_columns(grid, start * per_image, wg, cols)
        prod = np.matmul(wmat, cols, out=scratch.get("product", o * length, grid.dtype).reshape(o, length))
        out[start:stop] = prod.reshape(o, stop - start, hg, wg)[:, :, :ho, :wo].transpose(1, 0, 2, 3)
        if epilogue is not None:
            epilogue(out[start:stop], start, stop)

    _run_chunks(chunk, _chunks(n, per_image))


def _grid_weight_grad(grid: np.ndarray, dy_grid: np.ndarray, kernel, grid_hw, n: int) -> np.ndarray:
    """``dw.T[(c, i, j), o] = sum_t grid[c, t + i*Wg + j] * dy_grid[o, t]``, chunk by chunk in order.

    ``dy_grid[o, n*S + p*Wg + q]`` is ``dy[n, o, p, q]`` on the forward pass's output grid and zero
    where a grid position is not an output, so the columns are exactly those of the forward pass. The
    transposed product ``cols @ dy.T`` runs 1.2-1.6x faster in OpenBLAS than ``dy @ cols.T`` when ``O``
    is small (16-64 channels).
    """
    (kh, kw), (hg, wg) = kernel, grid_hw
    c, per_image = grid.shape[0], hg * wg
    k = kh * kw * c

    def chunk(start: int, stop: int, scratch: Scratch) -> np.ndarray:
        length, first = (stop - start) * per_image, start * per_image
        cols = scratch.get("cols", k * length, grid.dtype).reshape(c, kh, kw, length)
        return np.matmul(_grid_columns(grid, first, wg, cols), dy_grid[:, first : first + length].T)

    return _sum_in_order(_run_chunks(chunk, _chunks(n, per_image)))


def _sum_in_order(parts: list[np.ndarray]) -> np.ndarray:
    """``((parts[0] + parts[1]) + parts[2]) + ...``: a fixed order, whatever ran the chunks."""
    total = parts[0].copy()
    for part in parts[1:]:
        total += part
    return total


def _forward_grid(x, w, padding, epilogue: Epilogue = None, slot: str | None = None):
    """Path 1 forward: ``(y, grid)`` (the grid in scratch slot ``slot``, if named)."""
    (n, c, h, wd), (o, _, kh, kw), (ph, pw) = x.shape, w.shape, padding
    grid = _to_grid(x, padding, (kh, kw), slot)
    wmat = w.reshape(o, c * kh * kw)
    y = np.empty((n, o, h + 2 * ph - kh + 1, wd + 2 * pw - kw + 1), dtype=x.dtype)
    _grid_conv(grid, wmat, (kh, kw), (h + ph, wd + pw), y, epilogue)
    return y, grid


def _backward_grid(dy, grid, w, x_shape, padding) -> tuple[np.ndarray, np.ndarray]:
    """Path 1 backward: ``(dx, dw)``.

    ``dx`` is the stride-1 convolution of ``dy`` padded by ``(kh-1-ph, kw-1-pw)`` with the kernel
    flipped in both spatial axes and its channel axes swapped (``wt[c, o, i, j] = w[o, c, kh-1-i,
    kw-1-j]``). Its grid has the forward geometry (``Ho + kh-1-ph = H + ph``), so the same ``dy`` grid,
    shifted by its lead, is ``dy`` on the forward output grid for ``dw``.
    """
    (n, c, h, wd), (o, _, kh, kw), (ph, pw) = x_shape, w.shape, padding
    grid_hw, dpad = (h + ph, wd + pw), (kh - 1 - ph, kw - 1 - pw)
    dy_grid = _to_grid(dy, dpad, (kh, kw), slot="dy_grid")  # needed only in this call
    wt = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(c, o * kh * kw)
    dx = np.empty(x_shape, dtype=dy.dtype)
    _grid_conv(dy_grid, wt, (kh, kw), grid_hw, dx)
    lead = dpad[0] * grid_hw[1] + dpad[1]
    dw_t = _grid_weight_grad(grid, dy_grid[:, lead:], (kh, kw), grid_hw, n)
    return dx, np.ascontiguousarray(dw_t.T).reshape(w.shape)


# --------------------------------------------------------------------------------------------------
# Path 2: 1x1 kernels without padding
# --------------------------------------------------------------------------------------------------


def _forward_1x1(x, w, stride, epilogue: Epilogue = None) -> np.ndarray:
    """Path 2 forward: for each image, ``y[n] = w.reshape(O, C) @ x[n, :, ::sh, ::sw].reshape(C, -1)``,
    written straight into ``y`` (no column matrix, no transpose). The backward pass is path 3's, whose
    im2col of a 1x1 kernel is just this pixel matrix."""
    n, c = x.shape[:2]
    o, (sh, sw) = w.shape[0], stride
    ho, wo = output_size(x.shape[2], 1, sh, 0), output_size(x.shape[3], 1, sw, 0)
    y = np.empty((n, o, ho, wo), dtype=x.dtype)
    wmat = w.reshape(o, c)

    def chunk(start: int, stop: int, scratch: Scratch) -> None:
        pixels = scratch.get("cols", (stop - start) * c * ho * wo, x.dtype).reshape(stop - start, c, ho, wo)
        pixels[...] = x[start:stop, :, ::sh, ::sw]
        np.matmul(
            wmat, pixels.reshape(stop - start, c, ho * wo), out=y[start:stop].reshape(stop - start, o, -1)
        )
        if epilogue is not None:
            epilogue(y[start:stop], start, stop)

    _run_chunks(chunk, _chunks(n, ho * wo))
    return y


# --------------------------------------------------------------------------------------------------
# Inference between grids: a network's activations kept in the grid layout from layer to layer
# --------------------------------------------------------------------------------------------------


class GridBatch(NamedTuple):
    """An NCHW batch stored in the grid layout of a convolution with ``padding`` and ``kernel`` (see
    :func:`_to_grid`): what a model's inference pass hands from one layer to the next, so that a
    stride-1 layer reads its input without copying it into a grid and writes its output straight into
    the next layer's grid (no NCHW transpose in between)."""

    data: np.ndarray
    shape: tuple[int, int, int, int]
    padding: tuple[int, int]
    kernel: tuple[int, int]

    @property
    def lead(self) -> int:
        """Grid index of pixel ``(0, 0)`` of image 0 in every channel's row."""
        return self.padding[0] * (self.shape[3] + self.padding[1]) + self.padding[1]

    def images(self) -> np.ndarray:
        """View ``(C, N, Hg, Wg)``: pixel ``(n, c, h, w)`` is ``images[c, n, h + ph, w + pw]``."""
        n, c, h, w = self.shape
        hg, wg = h + self.padding[0], w + self.padding[1]
        return self.data[:, : n * hg * wg].reshape(c, n, hg, wg)

    def padded(self) -> np.ndarray:
        """The zero-padded batch ``(N, C, H + 2*ph, W + 2*pw)`` as a read-only view (no copy)."""
        return _padded_view(self.data, self.shape, self.padding)

    def nchw(self) -> np.ndarray:
        """The batch as a new C-contiguous NCHW array."""
        (_, _, h, w), (ph, pw) = self.shape, self.padding
        return np.ascontiguousarray(self.images()[:, :, ph : ph + h, pw : pw + w].transpose(1, 0, 2, 3))


def grid_batch(x: np.ndarray, padding: tuple[int, int], kernel: tuple[int, int]) -> GridBatch:
    """``x`` (NCHW) copied into the grid layout of a convolution with ``padding`` and ``kernel``."""
    return GridBatch(_to_grid(x, padding, kernel), tuple(x.shape), padding, kernel)


def _empty_grid(shape, padding, kernel, dtype, *, interior_zeros: bool) -> GridBatch:
    """A new grid whose border is zero: the padding of every image (``interior_zeros``) or only the
    head and the tail (a stride-1 product written in place brings the zeros of the rest)."""
    n, c, h, w = shape
    (ph, pw), (kh, kw) = padding, kernel
    hg, wg = h + ph, w + pw
    data = np.empty((c, n * hg * wg + (kh - 1) * wg + kw - 1), dtype=dtype)
    g = GridBatch(data, tuple(shape), padding, kernel)
    if interior_zeros:
        images = g.images()
        images[:, :, :ph] = 0
        images[:, :, ph:, :pw] = 0
        data[:, n * hg * wg :] = 0
    else:
        data[:, : g.lead] = 0
        data[:, g.lead + n * hg * wg :] = 0
    return g


def conv2d_inference(
    x: GridBatch,
    w: np.ndarray,
    stride: tuple[int, int],
    padding: tuple[int, int],
    epilogue: Epilogue,
    out_grid: tuple[tuple[int, int], tuple[int, int]] | None,
) -> GridBatch | np.ndarray:
    """Forward pass without bias and cache, from a grid, for a model's inference pass; unchecked core
    (the model validated its arguments).

    The output is a :class:`GridBatch` with ``out_grid = (padding, kernel)`` (the next layer's), or a
    new NCHW array for ``out_grid=None``. ``epilogue(chunk, start, stop)`` runs in place on each chunk
    of output images in channel-major layout ``(O, n, A, B)``, whose ``[:, :, :Ho, :Wo]`` corner is the
    output (``(A, B)`` is ``(Hg, Wg)`` on the grid path: the rest is overwritten after it).

    The matrix products are those of :func:`conv2d_forward` on the same values (the columns come from
    the same grid, or from the padded view of it, in the same chunks), so the output is the same bits.
    A stride-1 "same" convolution on the grid path writes each chunk's product into the output grid
    with one plain copy: a product position that is not an output falls exactly on the padding of the
    next grid, and is set to zero first.
    """
    (n, _, h, wd), (o, _, kh, kw) = x.shape, w.shape
    kernel = (kh, kw)
    ho, wo = output_size(h, kh, stride[0], padding[0]), output_size(wd, kw, stride[1], padding[1])
    out_shape = (n, o, ho, wo)
    on_grid = (x.padding, x.kernel) == (padding, kernel) and _uses_grid(x.shape, w.shape, stride, padding)
    if kernel == (1, 1) and padding == (0, 0):
        ph, pw = x.padding
        y = _forward_1x1(x.padded()[:, :, ph : ph + h, pw : pw + wd], w, stride, _transposed(epilogue))
        return y if out_grid is None else grid_batch(y, *out_grid)
    if on_grid and out_grid == (padding, kernel) and (ho, wo) == (h, wd):
        out = _empty_grid(out_shape, padding, kernel, x.data.dtype, interior_zeros=False)
        _grid_conv_to_grid(x, w.reshape(o, -1), epilogue, out)
        return out
    out = _empty_grid(out_shape, *out_grid, x.data.dtype, interior_zeros=True) if out_grid else None
    y = np.empty(out_shape, x.data.dtype) if out is None else None
    dest = y.transpose(1, 0, 2, 3) if out is None else out.images()[:, :, out.padding[0] :, out.padding[1] :]
    if on_grid:
        _grid_conv_into(x, w.reshape(o, -1), epilogue, dest)
    else:
        xp = x.padded() if x.padding == padding else pad_spatial(x.nchw(), padding)
        _im2col_conv_into(xp, w, stride, (ho, wo), epilogue, dest)
    return y if out is None else out


def _transposed(epilogue: Epilogue) -> Epilogue:
    """An NCHW-chunk epilogue that calls ``epilogue`` on the chunk's channel-major view."""
    if epilogue is None:
        return None
    return lambda chunk, start, stop: epilogue(chunk.transpose(1, 0, 2, 3), start, stop)


def _grid_conv_to_grid(x: GridBatch, wmat: np.ndarray, epilogue: Epilogue, out: GridBatch) -> None:
    """Path 1 of a "same" convolution from grid ``x`` straight into grid ``out`` (same geometry)."""
    (n, _, h, wd), (ph, pw) = x.shape, x.padding
    hg, wg = h + ph, wd + pw
    o, per_image, lead = wmat.shape[0], hg * wg, out.lead

    def write(prod: np.ndarray, start: int, stop: int) -> None:
        if epilogue is not None:
            epilogue(prod, start, stop)
        prod[:, :, h:] = 0  # positions that are not outputs: the next grid's padding
        prod[:, :, :h, wd:] = 0
        first = start * per_image
        out.data[:, lead + first : lead + stop * per_image] = prod.reshape(o, -1)

    _grid_products(x.data, wmat, x.kernel, (hg, wg), n, write)


def _grid_conv_into(x: GridBatch, wmat: np.ndarray, epilogue: Epilogue, dest: np.ndarray) -> None:
    """Path 1 from grid ``x``; each chunk's ``(Ho, Wo)`` corner goes to ``dest`` (channel-major)."""
    (n, _, h, wd), (ph, pw), (kh, kw) = x.shape, x.padding, x.kernel
    ho, wo = h + 2 * ph - kh + 1, wd + 2 * pw - kw + 1

    def write(prod: np.ndarray, start: int, stop: int) -> None:
        if epilogue is not None:
            epilogue(prod, start, stop)
        dest[:, start:stop, :ho, :wo] = prod[:, :, :ho, :wo]

    _grid_products(x.data, wmat, x.kernel, (h + ph, wd + pw), n, write)


def _grid_products(grid, wmat, kernel, grid_hw, n, write) -> None:
    """The chunk loop of :func:`_grid_conv`, handing each chunk's product ``(O, n, Hg, Wg)`` (in a
    scratch buffer) to ``write(prod, start, stop)``."""
    (kh, kw), (hg, wg) = kernel, grid_hw
    c, (o, k), per_image = grid.shape[0], wmat.shape, hg * wg

    def chunk(start: int, stop: int, scratch: Scratch) -> None:
        length = (stop - start) * per_image
        cols = scratch.get("cols", k * length, grid.dtype).reshape(c, kh, kw, length)
        cols = _grid_columns(grid, start * per_image, wg, cols)
        prod = np.matmul(wmat, cols, out=scratch.get("product", o * length, grid.dtype).reshape(o, length))
        write(prod.reshape(o, stop - start, hg, wg), start, stop)

    _run_chunks(chunk, _chunks(n, per_image))


def _im2col_conv_into(xp, w, stride, out_hw, epilogue: Epilogue, dest: np.ndarray) -> None:
    """Path 3 (the chunks and products of :func:`_forward_im2col`), each chunk's product
    ``(O, n, Ho, Wo)`` through ``epilogue`` into ``dest`` (channel-major)."""
    n, (ho, wo) = xp.shape[0], out_hw

    def chunk(start: int, stop: int, scratch: Scratch) -> None:
        prod = _im2col_chunk_product(xp, w, stride, out_hw, start, stop, scratch)
        if epilogue is not None:
            epilogue(prod, start, stop)
        dest[:, start:stop, :ho, :wo] = prod

    _run_chunks(chunk, _chunks(n, ho * wo))


def _im2col_chunk_product(xp, w, stride, out_hw, start: int, stop: int, scratch: Scratch) -> np.ndarray:
    """``w.reshape(O, -1) @ cols`` of padded images ``start:stop``, channel-major ``(O, n, Ho, Wo)``, in
    the chunk's scratch buffers: the one product of path 3's forward passes."""
    c, (o, _, kh, kw), (ho, wo) = xp.shape[1], w.shape, out_hw
    k, length = c * kh * kw, (stop - start) * ho * wo
    cols = scratch.get("cols", k * length, xp.dtype).reshape(c, kh, kw, stop - start, ho, wo)
    cols = _im2col(xp[start:stop], (kh, kw), stride, out_hw, cols)
    prod = scratch.get("product", o * length, xp.dtype).reshape(o, length)
    np.matmul(w.reshape(o, k), cols, out=prod)
    return prod.reshape(o, stop - start, ho, wo)


# --------------------------------------------------------------------------------------------------
# Path 3: im2col / col2im, any stride and padding
# --------------------------------------------------------------------------------------------------


def _im2col(xp: np.ndarray, kernel, stride, out_hw, cols: np.ndarray) -> np.ndarray:
    """Fill ``cols[c, i, j, n, p, q] = xp[n, c, p*sh + i, q*sw + j]`` for a chunk of padded images;
    return it as a matrix ``(C*kh*kw, n*Ho*Wo)`` whose row order matches ``w.reshape(O, C*kh*kw)``."""
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_hw
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xp[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw].transpose(1, 0, 2, 3)
    return cols.reshape(cols.shape[0] * kh * kw, -1)


def _col2im_add(dcols: np.ndarray, kernel, stride, out_hw, dxp: np.ndarray) -> None:
    """Adjoint of :func:`_im2col` for a chunk: add every column entry back to the padded-input position
    it was read from (``kh*kw`` strided additions, in kernel order)."""
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_hw
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw] += dcols[:, i, j].transpose(1, 0, 2, 3)


def _forward_im2col(xp, w, stride, out_hw, epilogue: Epilogue = None) -> np.ndarray:
    """Path 3 forward, chunk by chunk: ``y[chunk] = w.reshape(O, -1) @ cols[chunk]``."""
    n, o, (ho, wo) = xp.shape[0], w.shape[0], out_hw
    y = np.empty((n, o, ho, wo), dtype=xp.dtype)

    def chunk(start: int, stop: int, scratch: Scratch) -> None:
        prod = _im2col_chunk_product(xp, w, stride, out_hw, start, stop, scratch)
        y[start:stop] = prod.transpose(1, 0, 2, 3)
        if epilogue is not None:
            epilogue(y[start:stop], start, stop)

    _run_chunks(chunk, _chunks(n, ho * wo))
    return y


def _backward_im2col(dy, xp, w, stride, padding) -> tuple[np.ndarray, np.ndarray]:
    """Path 3 backward, chunk by chunk: ``dw += dy[chunk] @ cols.T`` (in chunk order) and col2im of
    ``w.T @ dy[chunk]``. Returns ``(dx, dw)``, ``dx`` without the padding border.

    col2im adds each kernel offset's block of ``dcols`` to the positions it was read from, offset after
    offset, so that every input position sums its terms in kernel order starting from zero. For a
    kernel larger than 1x1 that runs on a per-chunk accumulator with the images innermost and split by
    stride phase (``_col2im_chunk``): each addition is then a run of ``Wo * images`` contiguous values
    instead of ``Wo`` strided ones (256ch @8x8 and the stride-2 layers 10-15% faster backward, the same
    bits). ``dcols`` gets its columns in that order from ``dy`` with the images last: the product's
    entries are the same dot products (a column permutation of a product is the product of the
    permuted columns, bit for bit), while ``dw``, a sum over the columns, keeps the image-major order.
    """
    (n, c), (o, _, kh, kw), (ho, wo) = xp.shape[:2], w.shape, dy.shape[2:]
    (ph, pw), (hp, wp) = padding, xp.shape[2:]
    k, per_image = c * kh * kw, ho * wo
    wmat = w.reshape(o, k)
    one_tap = kh * kw == 1
    dx = np.zeros((n, c, hp, wp) if one_tap else (n, c, hp - 2 * ph, wp - 2 * pw), dtype=xp.dtype)

    def chunk(start: int, stop: int, scratch: Scratch) -> np.ndarray:
        length = (stop - start) * per_image
        cols = scratch.get("cols", k * length, xp.dtype).reshape(c, kh, kw, stop - start, ho, wo)
        cols = _im2col(xp[start:stop], (kh, kw), stride, (ho, wo), cols)
        dy_chunk = scratch.get("product", o * length, xp.dtype).reshape(o, stop - start, ho, wo)
        dy_chunk[...] = dy[start:stop].transpose(1, 0, 2, 3)
        dy_mat = dy_chunk.reshape(o, length)
        dcols = scratch.get("dcols", k * length, xp.dtype).reshape(k, length)
        if one_tap:  # a 1x1 kernel's col2im is one strided copy-add: no accumulator needed
            np.matmul(wmat.T, dy_mat, out=dcols)
            dcols_1x1 = dcols.reshape(c, 1, 1, stop - start, ho, wo)
            _col2im_add(dcols_1x1, (1, 1), stride, (ho, wo), dx[start:stop])
        else:
            dy_last = scratch.get("dy_last", o * length, xp.dtype).reshape(o, ho, wo, stop - start)
            dy_last[...] = dy[start:stop].transpose(1, 2, 3, 0)
            np.matmul(wmat.T, dy_last.reshape(o, length), out=dcols)
            dcols_last = dcols.reshape(c, kh, kw, ho, wo, stop - start)
            _col2im_chunk(dcols_last, stride, (hp, wp), padding, dx[start:stop], scratch)
        return np.matmul(cols, dy_mat.T)  # dw.T: faster for few channels (see _grid_weight_grad)

    dw_t = _sum_in_order(_run_chunks(chunk, _chunks(n, per_image)))
    if one_tap and (ph, pw) != (0, 0):
        dx = np.ascontiguousarray(dx[:, :, ph : hp - ph, pw : wp - pw])
    return dx, np.ascontiguousarray(dw_t.T).reshape(w.shape)


def _col2im_chunk(dcols: np.ndarray, stride, padded_hw, padding, dx: np.ndarray, scratch: Scratch) -> None:
    """col2im of one chunk, ``dcols[c, i, j, p, q, n]`` (images last), into ``dx`` (the chunk's
    ``(n, C, H, W)``, every element written).

    The accumulator ``acc[a, b, c, r, s, n]`` holds padded-input position ``(r*sh + a, s*sw + b)``, so
    kernel offset ``(i, j)`` adds its whole ``(C, Ho, Wo, n)`` block to phase ``(i % sh, j % sw)`` at
    ``(i // sh, j // sw)``: the positions of col2im, each summed in kernel order from zero.
    """
    c, kh, kw, ho, wo, nc = dcols.shape
    (sh, sw), (hp, wp), (ph, pw) = stride, padded_hw, padding
    h, w = dx.shape[2:]
    hs, ws = -(-hp // sh), -(-wp // sw)
    acc = scratch.get("col2im", sh * sw * c * hs * ws * nc, dx.dtype).reshape(sh, sw, c, hs, ws, nc)
    acc.fill(0)
    for i in range(kh):
        for j in range(kw):
            r, q = i // sh, j // sw
            acc[i % sh, j % sw, :, r : r + ho, q : q + wo] += dcols[:, i, j]
    for a in range(sh):  # input row y is padded row y + ph = r*sh + a
        r0 = max(0, -(-(ph - a) // sh))
        y0 = r0 * sh + a - ph
        rows = len(range(y0, h, sh))
        for b in range(sw):
            s0 = max(0, -(-(pw - b) // sw))
            x0 = s0 * sw + b - pw
            cols = len(range(x0, w, sw))
            dx[:, :, y0::sh, x0::sw] = acc[a, b, :, r0 : r0 + rows, s0 : s0 + cols].transpose(3, 0, 1, 2)


def _check_conv2d_inputs(fn, x, w, b, stride, padding) -> tuple[tuple[int, int], tuple[int, int]]:
    """Every check of :func:`conv2d_forward`'s arguments; returns ``(stride, padding)`` as pairs."""
    validation.check_float(x, "x", fn)
    validation.check_float(w, "w", fn)
    if b is not None:
        validation.check_float(b, "b", fn)
    validation.check_same_dtype(fn, x=x, w=w, b=b)
    validation.check_ndim(x, "x", fn, 4, "(N, C, H, W)")
    validation.check_ndim(w, "w", fn, 4, "(O, C, kh, kw)")
    check_nonempty(x, "x", fn)
    check_nonempty(w, "w", fn)
    validation.check_equal(fn, "w.shape[1]", w.shape[1], "x.shape[1]", x.shape[1], "the input channels")
    if b is not None:
        validation.check_shape(b, "b", fn, (w.shape[0],))
    stride = check_pair(stride, "stride", fn, low=1)
    padding = check_pair(padding, "padding", fn, low=0)
    _check_fits(fn, x.shape, (w.shape[2], w.shape[3]), padding)
    return stride, padding


def conv2d_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, stride=1, padding=0
) -> tuple[np.ndarray, Conv2dCache]:
    """2-D cross-correlation, like ``torch.nn.functional.conv2d(x, w, b, stride, padding)``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
        Input batch.
    w : ndarray, shape (O, C, kh, kw), same dtype as ``x``
        Weights (PyTorch's OIHW layout).
    b : ndarray of shape (O,), same dtype as ``x``, or None
        Optional bias.
    stride : int or (int, int)
        ``(sh, sw)``, each at least 1.
    padding : int or (int, int)
        Zero padding ``(ph, pw)`` added on both sides of each spatial axis, each at least 0.

    Returns
    -------
    y : ndarray, shape (N, O, Ho, Wo), dtype of ``x``
        ``Ho = floor((H + 2*ph - kh) / sh) + 1`` and likewise ``Wo``.
    cache : Conv2dCache

    Math
    ----
    With ``xp`` the zero-padded input,

    ``y[n, o, p, q] = b[o] + sum_{c, i, j} w[o, c, i, j] * xp[n, c, p*sh + i, q*sw + j]``.

    Notes
    -----
    This is cross-correlation (the kernel is not flipped), the convention of every deep-learning
    framework. Dilation and groups are not supported. The output size uses floor, so trailing rows or
    columns that do not fill a whole window are ignored, as in PyTorch.
    """
    stride, padding = _check_conv2d_inputs("conv2d", x, w, b, stride, padding)
    return conv2d_forward_unchecked(x, w, b, stride, padding)


def conv2d_forward_unchecked(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[np.ndarray, Conv2dCache]:
    """:func:`conv2d_forward` without the argument checks, for callers that pass checked arrays
    (the models' layers); ``stride`` and ``padding`` are pairs. Chooses the path (module docstring)."""
    y, cache = conv2d_forward_fused(x, w, stride, padding, None)
    if b is not None:
        y += b[:, None, None]  # y is our own new array: adding in place is safe
    return y, Conv2dCache(cache.x_padded, w, b is not None, stride, padding, cache.grid)


def conv2d_forward_fused(
    x: np.ndarray,
    w: np.ndarray,
    stride: tuple[int, int],
    padding: tuple[int, int],
    epilogue: Epilogue,
    *,
    keep_cache: bool = True,
) -> tuple[np.ndarray, Conv2dCache | None]:
    """The unchecked forward pass without bias, with ``epilogue(y[start:stop], start, stop)`` run in
    place on each chunk of output images as soon as it is written (``None``: nothing).

    The convolution's bits are those of :func:`conv2d_forward`; what the epilogue does to a chunk is the
    caller's (the models fuse evaluation-mode batch norm and ReLU here: the same elementwise operations
    in the same order, on a chunk still in the cache instead of whole arrays). Returns ``(y, cache)``,
    the cache ``None`` with ``keep_cache=False`` (then a stride-1 grid lives in a reused scratch buffer).
    """
    kernel = (w.shape[2], w.shape[3])
    grid = None
    if kernel == (1, 1) and padding == (0, 0):
        y, x_padded = _forward_1x1(x, w, stride, epilogue), x
    elif _uses_grid(x.shape, w.shape, stride, padding):
        y, grid = _forward_grid(x, w, padding, epilogue, None if keep_cache else "x_grid")
        x_padded = _padded_view(grid, x.shape, padding) if keep_cache else None
    else:
        x_padded = pad_spatial(x, padding)
        ho = output_size(x.shape[2], kernel[0], stride[0], padding[0])
        wo = output_size(x.shape[3], kernel[1], stride[1], padding[1])
        y = _forward_im2col(x_padded, w, stride, (ho, wo), epilogue)
    if not keep_cache:
        return y, None
    return y, Conv2dCache(x_padded, w, False, stride, padding, grid)


def _check_conv2d_backward_inputs(fn, dy, cache) -> None:
    if not isinstance(cache, Conv2dCache):
        raise TypeError(f"{fn}: cache must be a Conv2dCache from conv2d_forward, got {type(cache).__name__}")
    x_padded, w, _, stride, *_ = cache
    ho = (x_padded.shape[2] - w.shape[2]) // stride[0] + 1
    wo = (x_padded.shape[3] - w.shape[3]) // stride[1] + 1
    validation.check_float(dy, "dy", fn)
    validation.check_same_dtype(fn, x=x_padded, dy=dy)
    validation.check_shape(dy, "dy", fn, (x_padded.shape[0], w.shape[0], ho, wo))


def conv2d_backward(dy: np.ndarray, cache: Conv2dCache) -> Conv2dGrads:
    """Gradients of :func:`conv2d_forward` (what ``torch.autograd`` computes for ``conv2d``).

    Parameters
    ----------
    dy : ndarray, shape (N, O, Ho, Wo), dtype of the forward input
        Upstream gradient ``dL/dy``.
    cache : Conv2dCache
        From :func:`conv2d_forward`.

    Returns
    -------
    Conv2dGrads
        ``dx`` (N, C, H, W), ``dw`` (O, C, kh, kw) and ``db`` (O,) or None.

    Math
    ----
    ``dw[o, c, i, j] = sum_{n, p, q} dy[n, o, p, q] * xp[n, c, p*sh + i, q*sw + j]``,
    ``db[o] = sum_{n, p, q} dy[n, o, p, q]``,
    ``dxp[n, c, p*sh + i, q*sw + j] += w[o, c, i, j] * dy[n, o, p, q]`` summed over ``o, p, q, i, j``;
    ``dx`` is ``dxp`` without the padding border.

    Notes
    -----
    Input positions never read by the forward pass (trailing rows or columns left over by the floor in
    the output size) get a zero gradient.
    """
    _check_conv2d_backward_inputs("conv2d_backward", dy, cache)
    return conv2d_backward_unchecked(dy, cache)


def conv2d_backward_unchecked(dy: np.ndarray, cache: Conv2dCache) -> Conv2dGrads:
    """:func:`conv2d_backward` without the argument checks (``dy`` must have the output's shape and
    dtype), for the models' layers."""
    x_padded, w, has_bias, stride, padding, grid = cache
    ph, pw = padding
    n, c, hp, wp = x_padded.shape
    x_shape = (n, c, hp - 2 * ph, wp - 2 * pw)
    if grid is not None:
        dx, dw = _backward_grid(dy, grid, w, x_shape, padding)
    else:
        dx, dw = _backward_im2col(dy, x_padded, w, stride, padding)
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return Conv2dGrads(dx, dw, db)


def conv2d_vjp(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, dy: np.ndarray, *, stride=1, padding=0
) -> Conv2dGrads:
    """Vector-Jacobian product of :func:`conv2d_forward` at ``(x, w, b)`` applied to ``dy``.

    Runs the forward pass for its cache and then :func:`conv2d_backward`; for backends that cannot share
    our cache type. Parameters as in :func:`conv2d_forward` and :func:`conv2d_backward`.
    """
    _, cache = conv2d_forward(x, w, b, stride=stride, padding=padding)
    return conv2d_backward(dy, cache)
