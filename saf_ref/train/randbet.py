"""Training through the storage pipeline: robust quantization, weight clipping and RandBET.

This is the training side of DESIGN.md section 1. The optimizer updates latents ``u``; the network
computes with the effective weights ``w`` read back from (possibly faulty) memory::

    u ─ clip ─► encode ─► bits ─ faults ─► bits' ─ decode ─► û ─ f ─► w ─► model ─► loss
    du ◄─────── straight-through ◄──────────────────────────── f'(û) · dw ◄───────── dL/dw

Per batch, :func:`protected_train_step` implements the recipe of Stutz et al., "Bit Error Robustness
for Energy-Efficient DNN Accelerators" (MLSys 2021) and "Random and Adversarial Bit Error Robustness"
(TPAMI 2022):

1. **clean pass**: ``w = effective_weights(u, spec)`` (the quantized clean weights), forward and
   backward, ``g_clean = dL(w)/du`` (straight-through);
2. **perturbed pass** (RandBET, only with ``p_train > 0`` and ``errors_on``): a fresh random bit-error
   pattern at rate ``p_train`` in the stored words, ``w~ = effective_weights(u, spec, p=p_train)``,
   forward and backward, ``g_pert = dL(w~)/du`` (straight-through);
3. **update**: ``g = (g_clean + clamp(g_pert, -c, c)) / 2`` (only ``g_clean`` without errors), one SGD
   step on ``u``, then **weight clipping**: conv/linear weight latents projected onto ``[-w_max, w_max]``.

The same code trains SAF models (a spec with a saturating transform, ``p_train = 0``): that is plain
training through the pipeline, bit-identical to :func:`saf_ref.train.loop.train` with the same transform
when the storage format is float32.

Usage::

    from saf_ref.bits.quantize import Quantizer
    from saf_ref.protect.storage import default_spec
    from saf_ref.train.optim import SGD
    from saf_ref.train.randbet import RandBETConfig, train_protected

    spec = default_spec(Quantizer(8, scheme="asymmetric", code="offset_binary", margin=1e-3))
    params, state, history = train_protected(
        params, state, data, model="small_cnn", spec=spec, epochs=10, batch_size=64,
        optimizer=SGD(0.05, momentum=0.9, weight_decay=5e-4),
        config=RandBETConfig(p_train=0.01, weight_clip=0.1), rng=0)

PyTorch has no built-in equivalent; the reference implementation is ``AverageWeightsTraining`` in
github.com/davidstutz/random-bit-error-robustness (``common/train/average_weights_training.py``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from saf_ref import validation
from saf_ref.bits.faultlist import FaultList
from saf_ref.data.augment import iterate_minibatches
from saf_ref.nn.loss import cross_entropy_backward, cross_entropy_forward
from saf_ref.protect.storage import (
    NONFINITE_POLICIES,
    StorageSpec,
    _check_optional_positive,
    _check_spec,
    effective_weights,
    effective_weights_backward,
    param_role,
)
from saf_ref.train.loop import (
    ModelFns,
    _augment,
    _check_train_args,
    _load_checkpoint,
    _save_checkpoint,
    _unpack_data,
    evaluate,
    format_epoch,
    model_fns,
)
from saf_ref.train.optim import SGD, sgd_init, sgd_step

__all__ = [
    "RandBETConfig",
    "RandBETGradients",
    "StepInfo",
    "clip_weights",
    "protected_train_step",
    "randbet_gradients",
    "train_protected",
]


# --------------------------------------------------------------------------------------------------
# Validation helpers (the validation message template; optional positive numbers and specs are checked by
# the storage module's helpers, so both modules word those errors alike)
# --------------------------------------------------------------------------------------------------


def _check_bool(value: Any, name: str, fn: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}: {name} must be a bool, got {validation.describe(value)}")
    return bool(value)


def _check_params(params: Any, fn: str) -> dict[str, np.ndarray]:
    if not isinstance(params, Mapping) or not params:
        raise TypeError(
            f"{fn}: params must be a non-empty dict of numpy arrays, got {validation.describe(params)}"
        )
    for k, v in params.items():
        validation.check_float(v, f"params[{k!r}]", fn)
    return params


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RandBETConfig:
    """Hyperparameters of random bit-error training (RandBET) and weight clipping.

    Parameters
    ----------
    p_train : float in [0, 1]
        Bit-error rate of the perturbed pass; 0 disables it (robust quantization and clipping only,
        or plain/SAF training through the pipeline).
    grad_clamp : float or None, default 0.05
        The perturbed latent gradient is clamped elementwise to ``[-grad_clamp, grad_clamp]`` (the
        reference code's ``gradient_clipping = 0.05``); None: no clamp.
    weight_clip : float or None
        ``w_max``: after every step, and once before training, conv/linear weight latents are projected
        onto ``[-w_max, w_max]`` (Stutz et al. use 0.1, 0.05, ... for their CIFAR-10 networks; scale it to
        your model's weight range). None: no clipping. The latents then never leave the box, so the
        same clip in the spec (``default_spec(..., weight_clip=w_max)``) is redundant but harmless.
    curriculum_loss : float or None
        If given, bit errors stay off until an epoch's mean clean training loss falls below this value;
        they are on from the next epoch to the end (see :func:`train_protected`). None: on from the start.
    """

    p_train: float
    grad_clamp: float | None = 0.05
    weight_clip: float | None = None
    curriculum_loss: float | None = None

    def __post_init__(self) -> None:
        fn = "RandBETConfig"
        set_ = object.__setattr__  # frozen dataclass: store the validated plain floats
        set_(self, "p_train", validation.check_probability(self.p_train, "p_train", fn))
        for name in ("grad_clamp", "weight_clip", "curriculum_loss"):
            set_(self, name, _check_optional_positive(getattr(self, name), name, fn))


class StepInfo(NamedTuple):
    """What one protected step saw (all measured before the update).

    Attributes
    ----------
    loss : float
        Mean cross-entropy of the clean pass (quantized clean weights, train mode).
    perturbed_loss : float or None
        Mean cross-entropy of the perturbed pass; None when it did not run.
    n_correct : int
        Correct train-mode predictions of the clean pass.
    accuracy : float
        ``n_correct / batch size``.
    errors_on : bool
        Whether the perturbed pass ran.
    n_flips : int
        Bits flipped in the perturbed pass (0 when it did not run).
    """

    loss: float
    perturbed_loss: float | None
    n_correct: int
    accuracy: float
    errors_on: bool
    n_flips: int


class RandBETGradients(NamedTuple):
    """Result of :func:`randbet_gradients`.

    Attributes
    ----------
    update : dict str -> ndarray
        The direction given to the optimizer: ``(clean + clamp(perturbed)) / 2``, or ``clean`` when
        the perturbed pass did not run.
    clean : dict str -> ndarray
        Latent gradient of the clean loss (straight-through).
    perturbed : dict str -> ndarray or None
        Latent gradient of the perturbed loss (straight-through), *before* the clamp; None when the
        perturbed pass did not run.
    state : dict str -> ndarray
        Running statistics after the clean pass (the perturbed pass never updates them).
    info : StepInfo
    """

    update: dict[str, np.ndarray]
    clean: dict[str, np.ndarray]
    perturbed: dict[str, np.ndarray] | None
    state: dict[str, np.ndarray]
    info: StepInfo


# --------------------------------------------------------------------------------------------------
# Gradients, one step, weight clipping
# --------------------------------------------------------------------------------------------------


def _pass(
    fns: ModelFns,
    params: Mapping[str, np.ndarray],
    state: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    spec: StorageSpec,
    label_smoothing: float,
    fault_kwargs: dict[str, Any],
    nonfinite: str,
):
    """One pass through the pipeline: effective weights, train-mode forward, loss, latent gradient."""
    w, cache = effective_weights(params, spec, nonfinite=nonfinite, **fault_kwargs)
    # The transform is applied by the pipeline, so the model itself runs without one.
    logits, new_state, model_cache = fns.forward(w, state, x, train=True, transform=None)
    loss, loss_cache = cross_entropy_forward(logits, y, label_smoothing=label_smoothing)
    dw = fns.backward(cross_entropy_backward(1.0, loss_cache).dlogits, model_cache)
    du = effective_weights_backward(dw, cache)
    n_flips = 0 if cache.faults is None else len(cache.faults)
    return du, new_state, float(loss), logits, n_flips


def randbet_gradients(
    params: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    model: str | ModelFns,
    spec: StorageSpec,
    p_train: float = 0.0,
    rng: np.random.Generator | int | None = None,
    faults: FaultList | None = None,
    grad_clamp: float | None = 0.05,
    errors_on: bool = True,
    label_smoothing: float = 0.0,
    nonfinite: str = "propagate",
) -> RandBETGradients:
    """The RandBET update direction for one batch: clean and bit-error-perturbed gradients, combined.

    No PyTorch built-in; the reference is ``AverageWeightsTraining.train`` of Stutz et al.

    Parameters
    ----------
    params : dict str -> ndarray
        Latents ``u`` (float32 for a ``Quantizer`` format; float32 or float64 otherwise). Never modified.
    state : dict str -> ndarray
        Running statistics (batch norm); not modified.
    x : ndarray, shape (N, C, H, W) (or (N, ...) for the MLP), dtype of ``params``
    y : ndarray of int, shape (N,)
    model : str or ModelFns
        ``"small_cnn"``, ``"mlp"``, ``"resnet20"``, ... (see :func:`saf_ref.train.loop.model_fns`).
    spec : StorageSpec
        How every parameter is stored and read back (format, clip, scale, transform, exposure).
    p_train : float in [0, 1]
        Bit-error rate of the perturbed pass (a fresh pattern drawn from ``rng``).
    rng : numpy.random.Generator or int seed
        Required when the perturbed pass draws a pattern (``p_train > 0``, ``errors_on``, no
        ``faults``); otherwise unused (it may then be None).
    faults : FaultList, optional
        Replay this fixed pattern in the perturbed pass instead of drawing one (adversarial bit errors,
        tests). Requires ``p_train == 0``.
    grad_clamp : float or None
        Elementwise clamp of the perturbed gradient; None: no clamp.
    errors_on : bool
        False skips the perturbed pass (the curriculum of :func:`train_protected` uses it).
    label_smoothing : float
        Passed to the cross-entropy of both passes.
    nonfinite : {"propagate", "zero"}
        What a NaN/inf read from memory becomes (see :func:`saf_ref.protect.storage.load`); both passes.

    Returns
    -------
    RandBETGradients

    Math
    ----
    With ``w(u) = f(decode(encode(clip(u))))`` and ``w~(u) = f(decode(F(encode(clip(u)))))`` for the
    bit-error pattern ``F``, both differentiated straight-through (the Jacobian of
    clip/encode/F/decode taken as the identity, see
    :func:`saf_ref.protect.storage.effective_weights_backward`)::

        g_clean = f'(û)  · dL/dw  at w  = f(û),   û  = decode(encode(clip(u)))
        g_pert  = f'(û~) · dL/dw  at w~ = f(û~),  û~ = decode(F(encode(clip(u))))
        update  = (g_clean + clamp(g_pert, -c, c)) / 2        (perturbed pass on)
        update  = g_clean                                     (off)

    The reference code sums the clean gradient and the clamped perturbed one and divides by
    ``population + 1`` (= 2 with one perturbed pass), i.e. the same average; without errors it uses the
    clean gradient alone, undivided, as here.

    Notes
    -----
    - Both passes run the model in training mode (batch statistics). Only the clean pass's running
      statistics are kept (the reference code's default, ``average_statistics = False``): the
      running averages describe the fault-free model that is stored.
    - The clamp applies to every parameter's perturbed gradient (biases and batch-norm parameters too),
      as in the reference code.
    - The latents are never modified: faults act on a stored copy (test by hashing).
    """
    fn = "randbet_gradients"
    fns = model_fns(model, fn)
    _check_params(params, fn)
    _check_spec(spec, fn)
    p_train = validation.check_probability(p_train, "p_train", fn)
    grad_clamp = _check_optional_positive(grad_clamp, "grad_clamp", fn)
    errors_on = _check_bool(errors_on, "errors_on", fn)
    label_smoothing = validation.check_real(label_smoothing, "label_smoothing", fn)
    validation.check_choice(nonfinite, "nonfinite", fn, NONFINITE_POLICIES)
    if faults is not None:
        if not isinstance(faults, FaultList):
            raise TypeError(f"{fn}: faults must be None or a FaultList, got {validation.describe(faults)}")
        if p_train != 0.0:
            raise ValueError(
                f"{fn}: p_train must be 0 when faults is given (the pattern is replayed, not drawn), "
                f"got {p_train!r}"
            )
    perturb = errors_on and (p_train > 0.0 or faults is not None)
    if perturb and faults is None:
        gen = validation.check_rng(rng, fn)
    elif rng is not None:
        validation.check_rng(rng, fn)  # unused, but a wrong type is still a mistake worth reporting

    du_clean, new_state, loss, logits, _ = _pass(
        fns, params, state, x, y, spec, label_smoothing, {}, nonfinite
    )
    n_correct = int(np.sum(np.argmax(logits, axis=1) == y))
    accuracy = n_correct / max(x.shape[0], 1)
    if not perturb:
        info = StepInfo(loss, None, n_correct, accuracy, False, 0)
        return RandBETGradients(du_clean, du_clean, None, new_state, info)

    fault_kwargs = {"faults": faults} if faults is not None else {"p": p_train, "rng": gen}
    # The perturbed pass starts from the same running statistics; its updated ones are discarded.
    du_pert, _, pert_loss, _, n_flips = _pass(
        fns, params, state, x, y, spec, label_smoothing, fault_kwargs, nonfinite
    )
    update = {}
    for name, g_clean in du_clean.items():
        g_pert = du_pert[name]
        if grad_clamp is not None:
            c = g_pert.dtype.type(grad_clamp)
            g_pert = np.clip(g_pert, -c, c)  # NaN stays NaN
        # Halving is exact in binary floating point (barring underflow): one rounding, in the sum.
        update[name] = np.asarray((g_clean + g_pert) * g_clean.dtype.type(0.5))
    info = StepInfo(loss, pert_loss, n_correct, accuracy, True, n_flips)
    return RandBETGradients(update, du_clean, du_pert, new_state, info)


def clip_weights(params: dict[str, np.ndarray], weight_clip: float) -> dict[str, np.ndarray]:
    """Weight clipping: project conv/linear weights onto ``[-weight_clip, weight_clip]``.

    PyTorch equivalent: ``for w in conv_and_linear_weights: w.data.clamp_(-c, c)`` after
    ``optimizer.step()``.

    Parameters
    ----------
    params : dict str -> ndarray
        Latents; the parameters of role ``"weight"`` (see :func:`saf_ref.protect.storage.param_role`:
        ``*.weight`` with ``ndim >= 2``) are clipped, the others returned unchanged. Not modified.
    weight_clip : float
        ``w_max > 0``, rounded to each parameter's dtype.

    Returns
    -------
    dict str -> ndarray
        A new dict (clipped tensors are new arrays; the others are the same objects).

    Math
    ----
    ``u <- min(max(u, -w_max), w_max)`` elementwise (the Euclidean projection onto the box).

    Notes
    -----
    The reference code projects every trainable tensor of its models (whose normalisation layers are
    not trained); here biases and batch-norm parameters are left alone, so that clipping bounds the
    weights a bit error can corrupt without constraining the normalisation layers.
    """
    fn = "clip_weights"
    _check_params(params, fn)
    weight_clip = _check_optional_positive(weight_clip, "weight_clip", fn)
    if weight_clip is None:
        raise ValueError(f"{fn}: weight_clip must be a finite positive number, got None")
    shapes = {k: v.shape for k, v in params.items()}
    out = {}
    for name, u in params.items():
        if param_role(name, shapes) == "weight":
            with np.errstate(over="ignore", under="ignore"):
                c = u.dtype.type(weight_clip)
            if not (np.isfinite(c) and c > 0):  # float32(1e-50) = 0 would zero the weights
                raise ValueError(
                    f"{fn}: weight_clip must be finite and > 0 in {u.dtype}, the dtype of params[{name!r}], "
                    f"got {weight_clip!r}, which rounds to {c!r}"
                )
            out[name] = np.clip(u, -c, c)
        else:
            out[name] = u
    return out


def protected_train_step(
    params: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    opt_state: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    model: str | ModelFns,
    optimizer: SGD,
    spec: StorageSpec,
    lr: float | None = None,
    p_train: float = 0.0,
    rng: np.random.Generator | int | None = None,
    grad_clamp: float | None = 0.05,
    weight_clip: float | None = None,
    errors_on: bool = True,
    label_smoothing: float = 0.0,
    faults: FaultList | None = None,
    nonfinite: str = "propagate",
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], StepInfo]:
    """One optimizer step through the storage pipeline (robust quantization, RandBET, weight clipping).

    No PyTorch built-in; see the module docstring for the recipe and the reference code.

    Parameters
    ----------
    params, state, opt_state : dict str -> ndarray
        Latents, running statistics, and the optimizer state (:func:`saf_ref.train.optim.sgd_init`).
        Not modified.
    x, y : ndarray
        One batch (see :func:`randbet_gradients`).
    model : str or ModelFns
    optimizer : SGD
        Weight decay and momentum act on the latents, as in PyTorch.
    spec : StorageSpec
    lr : float, optional
        Learning rate of this step (a schedule's value); default ``optimizer.lr``.
    p_train, rng, grad_clamp, errors_on, label_smoothing, faults, nonfinite
        See :func:`randbet_gradients`.
    weight_clip : float or None
        Project conv/linear weight latents onto ``[-weight_clip, weight_clip]`` after the step
        (:func:`clip_weights`); None: no projection.

    Returns
    -------
    params, state, opt_state : dict
        New dicts after the step.
    info : StepInfo
        Clean loss, perturbed loss (or None), clean accuracy, whether errors were on, flips.

    Math
    ----
    ``g = update of randbet_gradients``; ``u' = SGD(u, g)``; ``u' = clip(u', -w_max, w_max)`` for
    conv/linear weights.

    Notes
    -----
    With ``spec = default_spec("float32")`` (identity transform), ``p_train = 0`` and no clip, the
    result is bit-identical to :func:`saf_ref.train.loop.train_step` with ``transform=None``; with a
    transform in the spec, to ``train_step`` with that transform.
    """
    fn = "protected_train_step"
    if not isinstance(optimizer, SGD):
        raise TypeError(
            f"{fn}: optimizer must be a saf_ref.train.optim.SGD, got {validation.describe(optimizer)}"
        )
    weight_clip = _check_optional_positive(weight_clip, "weight_clip", fn)
    grads = randbet_gradients(
        params, state, x, y, model=model, spec=spec, p_train=p_train, rng=rng, faults=faults,
        grad_clamp=grad_clamp, errors_on=errors_on, label_smoothing=label_smoothing, nonfinite=nonfinite,
    )  # fmt: skip
    new_params, new_opt_state = sgd_step(params, grads.update, opt_state, optimizer, lr=lr)
    if weight_clip is not None:
        new_params = clip_weights(new_params, weight_clip)
    return new_params, grads.state, new_opt_state, grads.info


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def _format_record(record: dict[str, Any], epochs: int) -> str:
    """:func:`saf_ref.train.loop.format_epoch`'s line plus the bit-error state of the epoch."""
    extra = "  errors off"
    if record["errors_on"]:
        extra = f"  errors on (perturbed loss {record['perturbed_loss']:.4f})"
    return format_epoch(record, epochs) + extra


def train_protected(
    params: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    data: tuple,
    *,
    model: str | ModelFns,
    spec: StorageSpec,
    epochs: int,
    batch_size: int = 128,
    optimizer: SGD | None = None,
    schedule: Any = None,
    config: RandBETConfig | None = None,
    rng: np.random.Generator | int,
    verbose: bool = True,
    augment: str | None = None,
    pad: int = 4,
    label_smoothing: float = 0.0,
    nonfinite: str = "propagate",
    callback: Callable[[int, dict, dict, dict], None] | None = None,
    eval_batch_size: int = 500,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[dict[str, Any]]]:
    """Train through the storage pipeline with :func:`protected_train_step`, evaluating every epoch.

    Parameters
    ----------
    params, state : dict str -> ndarray
        Initial latents and running statistics. Not modified.
    data : tuple
        ``(x_train, y_train, x_test, y_test)`` (a :class:`saf_ref.data.shipped.Dataset`) or
        ``(x_train, y_train)``, in the parameters' dtype.
    model : str or ModelFns
    spec : StorageSpec
        Storage of every parameter (e.g. ``default_spec(Quantizer(8, margin=1e-3))``, or
        ``default_spec("float16", "tanh")`` for SAF training).
    epochs : int
    batch_size : int
        The last, smaller batch of an epoch is kept.
    optimizer : SGD or None
        Default ``SGD(0.1, momentum=0.9, weight_decay=5e-4)``.
    schedule : object with ``lr_at(epoch)`` or None
        Learning rate per epoch (``None``: ``optimizer.lr``).
    config : RandBETConfig or None
        Default ``RandBETConfig(p_train=0.0)``: no bit errors, no clipping (plain training through the
        pipeline, e.g. robust quantization alone, or SAF).
    rng : numpy.random.Generator or int
        Source of all randomness (shuffling, augmentation, bit-error patterns).
    verbose : bool
        One progress line per epoch (loss, accuracies, images/s, bit-error state).
    augment : {"crop_flip", "crop", "flip", None}
        As in :func:`saf_ref.train.loop.train` (default None here).
    pad : int
        Padding of the random crop.
    label_smoothing : float
    nonfinite : {"propagate", "zero"}
        Non-finite policy of every read (training passes and evaluation).
    callback : callable or None
        ``callback(epoch, params, state, record)`` after every epoch.
    eval_batch_size : int
    checkpoint : path or None
        Written after every epoch (.npz + JSON, :mod:`saf_ref.train.checkpoint`): latents, running
        statistics, optimizer state, and as metadata the epoch, the seed, the history, the spec and the
        RandBET configuration.
    resume : bool
        If ``checkpoint`` exists, continue from it (the given ``params``/``state`` are then ignored); the
        result is bit-identical to an uninterrupted run. The checkpoint must have been written by
        ``train_protected`` with the same model, spec and configuration.

    Returns
    -------
    params, state : dict str -> ndarray
        Latents and running statistics after the last epoch (store them with the same ``spec``).
    history : list of dict
        Per epoch: ``epoch``, ``lr``, ``loss`` (mean clean train-mode batch loss), ``train_acc``,
        ``test_acc`` and ``test_loss`` (the clean stored model: latents read through the pipeline
        without faults, evaluation mode; None without a test split), ``errors_on``, ``perturbed_loss``
        (mean over the epoch's batches, None when errors were off), ``flips`` (bits flipped in the
        epoch's perturbed passes), ``seconds``, ``images_per_s``.

    Notes
    -----
    - **Randomness.** As in :func:`saf_ref.train.loop.train`: ``base_seed`` is drawn once from ``rng``,
      epoch ``e`` shuffles and augments with ``default_rng([base_seed, e])``, and draws its bit-error
      patterns from a separate stream ``default_rng([base_seed, e, 1])``. Switching errors on or off
      therefore never changes the batches, and with ``config.p_train = 0``, no clip and a float32
      identity (or transform) spec the result is bit-identical to ``train`` with the same ``rng``.
    - **Curriculum.** With ``config.curriculum_loss = t`` errors are off in epoch 0; at the start of
      epoch ``e >= 1`` they are switched on if the mean clean loss of epoch ``e - 1`` was below ``t``,
      and stay on until the end. (The reference code decides per batch, from the batch's clean and
      perturbed losses, and can switch back off; a per-epoch latch is easier to reproduce and read.)
    - **Weight clipping** projects the weight latents once before the first step and after every
      step; the reference code projects before every step, which is the same sequence of weights.
    - The result depends only on the arguments (bit for bit on one machine and BLAS configuration).
    """
    fn = "train_protected"
    fns = model_fns(model, fn)
    x_train, y_train, x_test, y_test = _unpack_data(data, fn)
    optimizer = SGD(0.1, momentum=0.9, weight_decay=5e-4) if optimizer is None else optimizer
    epochs = _check_train_args(params, x_train, x_test, optimizer, schedule, augment, epochs, fn)
    _check_spec(spec, fn)
    config = RandBETConfig(0.0) if config is None else config
    if not isinstance(config, RandBETConfig):
        raise TypeError(f"{fn}: config must be None or a RandBETConfig, got {validation.describe(config)}")
    batch_size = validation.check_int(batch_size, "batch_size", fn, low=1)
    pad = validation.check_int(pad, "pad", fn, low=0)
    validation.check_real(label_smoothing, "label_smoothing", fn)
    validation.check_choice(nonfinite, "nonfinite", fn, NONFINITE_POLICIES)
    eval_batch_size = validation.check_int(eval_batch_size, "eval_batch_size", fn, low=1)
    gen = validation.check_rng(rng, fn)
    _check_bool(verbose, "verbose", fn)
    if callback is not None and not callable(callback):
        raise TypeError(f"{fn}: callback must be callable or None, got {validation.describe(callback)}")

    _check_bool(resume, "resume", fn)
    if resume and checkpoint is None:
        raise ValueError(f"{fn}: resume=True needs a checkpoint path, got checkpoint=None")

    base_seed = int(gen.integers(2**63))  # one draw from the caller's generator, as loop.train
    if config.weight_clip is not None:
        params = clip_weights(params, config.weight_clip)
    opt_state = sgd_init(params)
    errors_on = config.p_train > 0.0 and config.curriculum_loss is None
    history: list[dict[str, Any]] = []
    start_epoch = 0
    # What a checkpoint must agree on to be resumed (JSON-able; compared after a JSON round trip).
    identity = json.loads(json.dumps({"trainer": fn, "spec": spec.to_dict(), "config": _config_dict(config)}))
    if resume and os.path.exists(checkpoint):
        params, state, opt_state, meta = _load_checkpoint(checkpoint, fns.name, fn)
        for key in ("trainer", "spec", "config"):
            if meta.get(key) != identity[key]:
                raise ValueError(
                    f"{fn}: the checkpoint {checkpoint} has {key} {meta.get(key)!r}, got {identity[key]!r}"
                )
        base_seed, history, start_epoch = meta["base_seed"], meta["history"], meta["epoch"] + 1
        errors_on = _errors_on_after(history[-1], config)

    for epoch in range(start_epoch, epochs):
        epoch_rng = np.random.default_rng([base_seed, epoch])
        fault_rng = np.random.default_rng([base_seed, epoch, 1])
        lr = optimizer.lr if schedule is None else float(schedule.lr_at(epoch))
        t0 = time.perf_counter()
        loss_sum, pert_sum, n_correct, n_seen, flips = 0.0, 0.0, 0, 0, 0
        for xb, yb in iterate_minibatches(x_train, y_train, batch_size, rng=epoch_rng):
            xb = _augment(xb, augment, pad, epoch_rng)
            params, state, opt_state, info = protected_train_step(
                params, state, opt_state, xb, yb, model=fns, optimizer=optimizer, spec=spec, lr=lr,
                p_train=config.p_train, rng=fault_rng, grad_clamp=config.grad_clamp,
                weight_clip=config.weight_clip, errors_on=errors_on, label_smoothing=label_smoothing,
                nonfinite=nonfinite,
            )  # fmt: skip
            loss_sum += info.loss * xb.shape[0]
            if info.errors_on:
                pert_sum += info.perturbed_loss * xb.shape[0]
            n_correct += info.n_correct
            n_seen += xb.shape[0]
            flips += info.n_flips
        seconds = time.perf_counter() - t0
        test = None
        if x_test is not None:
            clean, _ = effective_weights(params, spec, nonfinite=nonfinite)  # the stored model, no faults
            test = evaluate(clean, state, x_test, y_test, model=fns, batch_size=eval_batch_size)
        mean_loss = loss_sum / max(n_seen, 1)
        record = {
            "epoch": epoch,
            "lr": lr,
            "loss": mean_loss,
            "train_acc": n_correct / max(n_seen, 1),
            "test_acc": None if test is None else test.accuracy,
            "test_loss": None if test is None else test.loss,
            "errors_on": errors_on,
            "perturbed_loss": pert_sum / max(n_seen, 1) if errors_on else None,
            "flips": flips,
            "seconds": seconds,
            "images_per_s": n_seen / seconds if seconds > 0 else float("inf"),
        }
        history.append(record)
        if verbose:
            print(_format_record(record, epochs), flush=True)
        if checkpoint is not None:
            _save_checkpoint(
                checkpoint, params, state, opt_state, fns.name, epoch, base_seed, history, extra=identity
            )
        if callback is not None:
            callback(epoch, params, state, record)
        errors_on = _errors_on_after(record, config)
    return params, state, history


def _errors_on_after(record: dict[str, Any], config: RandBETConfig) -> bool:
    """Whether bit errors are on in the epoch after ``record``'s.

    The curriculum is a latch: once on, errors stay on; off, they switch on when the epoch's mean clean
    loss fell below ``config.curriculum_loss`` (a loss stored as None, i.e. non-finite, never does).
    """
    if record["errors_on"] or config.p_train == 0.0 or config.curriculum_loss is None:
        return bool(record["errors_on"])
    loss = record["loss"]
    return loss is not None and loss < config.curriculum_loss


def _config_dict(config: RandBETConfig) -> dict[str, Any]:
    """The configuration as JSON-able numbers (as a checkpoint's metadata stores it)."""
    return {
        "p_train": config.p_train,
        "grad_clamp": config.grad_clamp,
        "weight_clip": config.weight_clip,
        "curriculum_loss": config.curriculum_loss,
    }
