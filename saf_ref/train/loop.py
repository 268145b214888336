"""The training loop: minibatch SGD with augmentation, per-epoch evaluation, progress lines, checkpoints.

One loop trains every kind of model saf_ref has:

- **plain**: ``train(params, state, data, model=...)``; the network computes with ``w = u``;
- **SAF** (saturated weight transforms): ``transform="tanh"`` (shorthand for a storage spec that keeps
  every tensor in the parameters' own dtype and applies ``f`` to the conv/linear weights), or any
  ``spec``;
- **through the storage pipeline** (robust quantization, weight clipping, RandBET, AdvBET): ``spec=`` a
  :class:`~saf_ref.protect.storage.StorageSpec`, ``randbet=`` a
  :class:`~saf_ref.train.randbet.RandBETConfig` (AdvBET: with ``adversarial=`` an attack such as
  :class:`saf_ref.attack.AdvBETConfig`, injected: this layer never imports the attack).

With a spec, every step computes with the effective weights ``w = effective_weights(u, spec)``
(:mod:`saf_ref.protect`, DESIGN.md section 1) and the optimizer updates the latents ``u`` with the
straight-through gradient; see :mod:`saf_ref.train.randbet` for the RandBET recipe.

Usage::

    from saf_ref.data.shipped import load_mnist5k
    from saf_ref.nn.resnet import init_resnet
    from saf_ref.train.loop import evaluate, train
    from saf_ref.train.optim import SGD
    from saf_ref.train.schedules import Cosine

    data = load_mnist5k()                                      # (x_train, y_train, x_test, y_test)
    params, state = init_resnet("resnet20", in_channels=1, width=8, rng=0)
    params, state, history = train(params, state, data, model="resnet20", epochs=10, batch_size=64,
                                   optimizer=SGD(0.05, momentum=0.9, weight_decay=5e-4),
                                   schedule=Cosine(0.05, t_max=10), augment="crop", pad=2, rng=0)
    print(evaluate(params, state, data.x_test, data.y_test, model="resnet20").accuracy)

Models are named as in :mod:`saf_ref.nn.registry` (``"small_cnn"``, ``"resnet20@act_clip=6"``, ...).

Everything random (initialization aside) comes from ``rng``: the shuffling and the augmentation of epoch
``e`` use ``np.random.default_rng([base_seed, e])`` with ``base_seed`` drawn once from ``rng``, and the
bit-error patterns of RandBET a separate stream ``np.random.default_rng([base_seed, e, 1])``; so a run
resumed from a checkpoint after epoch ``e`` continues with exactly the draws of an uninterrupted run,
and switching bit errors on or off never changes the batches.

Resuming (``train(..., checkpoint=path, resume=True)``) continues the interrupted run bit for bit, to a
new ``epochs`` if asked; the checkpoint records the model, the storage spec, the RandBET configuration
and the training settings and data (digests), and a resumed call that differs in any of them (but
``epochs``) is refused with a ValueError naming the setting. Checkpoints written before the settings
were recorded are resumed with the model, spec and RandBET configuration checked only.

PyTorch equivalent: the usual ``for epoch: model.train(); for x, y in loader: loss.backward();
opt.step(); scheduler.step()`` loop, with ``model.eval()`` for testing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from saf_ref.data.augment import iterate_minibatches, random_crop, random_crop_flip, random_hflip
from saf_ref.determinism import blas_threads_pinned
from saf_ref.nn.loss import cross_entropy_backward, cross_entropy_forward
from saf_ref.nn.registry import ModelFns, model_fns
from saf_ref.protect.storage import NONFINITE_POLICIES, StorageSpec, default_spec, effective_weights
from saf_ref.protect.stored import check_encodable
from saf_ref.train import checkpoint as ckpt
from saf_ref.train.optim import SGD, sgd_init, sgd_step
from saf_ref.train.randbet import (
    RandBETConfig,
    StepInfo,
    clip_weights,
    curriculum_errors_on,
    errors_on_after,
    randbet_gradients,
)
from saf_ref.validation import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_ndim,
    check_real,
    check_rng,
    describe,
)

__all__ = [
    "AUGMENTATIONS",
    "EvalResult",
    "evaluate",
    "format_epoch",
    "train",
    "train_step",
]

AUGMENTATIONS = ("crop_flip", "crop", "flip", None)
# The record keys about bit errors (dropped for the transform= shorthand, which stores exactly).
_ERROR_KEYS = (
    "errors_on", "perturbed_loss", "flips", "adversarial_loss", "batches", "error_batches", "errors_on_next"
)


# --------------------------------------------------------------------------------------------------
# One step, evaluation
# --------------------------------------------------------------------------------------------------


def train_step(
    params: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    opt_state: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    model: str | ModelFns,
    optimizer: SGD,
    lr: float | None = None,
    spec: StorageSpec | None = None,
    randbet: RandBETConfig | None = None,
    errors_on: bool = True,
    rng: np.random.Generator | int | None = None,
    label_smoothing: float = 0.0,
    nonfinite: str = "propagate",
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], StepInfo]:
    """One optimizer step on one batch: train-mode forward, cross-entropy, backward, SGD.

    Parameters
    ----------
    params, state, opt_state : dict[str, ndarray]
        Latents (the weights themselves without a spec), running statistics, optimizer state
        (:func:`saf_ref.train.optim.sgd_init`). Not modified.
    x, y : ndarray
        One batch: inputs in the parameters' dtype, int labels ``(N,)``.
    model : str or ModelFns
    optimizer : SGD
    lr : float, optional
        Learning rate of this step (a schedule's value); default ``optimizer.lr``.
    spec : StorageSpec or None
        None: the network computes with ``params`` as they are. Otherwise with the effective weights
        read back through the storage pipeline (straight-through gradient).
    randbet : RandBETConfig or None
        Bit errors in a second, perturbed pass (``p_train``), adversarial bit errors in another
        (``adversarial``: the attack runs on this batch against ``params`` as stored by ``spec``, with
        the running statistics ``state``), their gradient clamp, and weight clipping after the step;
        None: none of them. Needs a ``spec`` (without one it is refused, as by :func:`train`).
    errors_on : bool
        Whether the perturbed passes run (the curriculum switches them; no attack runs when off).
    rng : numpy.random.Generator or int or None
        Source of the perturbed pass's bit-error pattern (needed only when that pass runs).
    label_smoothing : float
    nonfinite : {"propagate", "zero"}
        Read policy for NaN/inf in the stored weights (with a spec).

    Returns
    -------
    params, state, opt_state : dict
        New dicts after the step.
    info : StepInfo
        Clean loss and accuracy (before the step), perturbed loss and flips (or None and 0).

    Math
    ----
    Without a spec: ``g = dL(u)/du``, ``u' = SGD(u, g)``. With a spec and a RandBET configuration:
    ``g = (g_clean + clamp(g_pert)) / 2`` (:func:`saf_ref.train.randbet.randbet_gradients`),
    ``u' = clip(SGD(u, g), -w_max, w_max)`` for conv/linear weights (the tensors of the roles
    ``randbet.clip_roles``). With ``randbet.adversarial`` (AdvBET): ``F_adv = attack(u, state, x, y)``
    first, then ``g`` as :func:`~saf_ref.train.randbet.randbet_gradients` with ``adversarial=F_adv``:
    ``(g_clean + clamp(g_adv)) / 2``, or ``(g_clean + clamp(g_rand) + clamp(g_adv)) / 3`` with
    ``p_train > 0``.
    """
    fns = model_fns(model, "train_step")
    # As train(): a RandBET configuration without a spec would be silently ignored (no perturbed pass).
    spec = _resolve_spec(spec, None, randbet, None, "train_step")
    check_bool(errors_on, "errors_on", "train_step")
    return _step(
        params, state, opt_state, x, y, fns, optimizer, lr, spec, randbet, errors_on, rng, label_smoothing,
        nonfinite,
    )  # fmt: skip


def _step(
    params, state, opt_state, x, y, fns, optimizer, lr, spec, randbet, errors_on, rng, label_smoothing,
    nonfinite,
):  # fmt: skip
    """:func:`train_step` with its arguments checked (``fns`` a ModelFns, ``spec`` and ``randbet``
    resolved): what :func:`train`'s loop runs for each batch, having checked them once."""
    if spec is None:
        grads, new_state, info = _plain_gradients(fns, params, state, x, y, label_smoothing)
    else:
        config = randbet or RandBETConfig(0.0)
        adversarial = None
        if config.adversarial is not None and errors_on:
            # The attack sees the model as it is stored before this step: latents through the spec,
            # and the running statistics (evaluation mode), on this step's batch.
            adversarial = config.adversarial.faults(
                params, state, x, y, model=fns, spec=spec, nonfinite=nonfinite
            )
        result = randbet_gradients(
            params, state, x, y, model=fns, spec=spec, p_train=config.p_train, rng=rng,
            grad_clamp=config.grad_clamp, errors_on=errors_on, label_smoothing=label_smoothing,
            nonfinite=nonfinite, adversarial=adversarial,
        )  # fmt: skip
        grads, new_state, info = result.update, result.state, result.info
    new_params, new_opt_state = sgd_step(params, grads, opt_state, optimizer, lr=lr)
    if randbet is not None and randbet.weight_clip is not None:
        new_params = clip_weights(new_params, randbet.weight_clip, roles=randbet.clip_roles)
    return new_params, new_state, new_opt_state, info


def _plain_gradients(fns, params, state, x, y, label_smoothing):
    """``dL/dparams`` of a network computing with ``params`` as they are; ``(grads, new_state, info)``."""
    logits, new_state, cache = fns.forward(params, state, x, train=True)
    loss, loss_cache = cross_entropy_forward(logits, y, label_smoothing=label_smoothing)
    grads = fns.backward(cross_entropy_backward(1.0, loss_cache).dlogits, cache).params
    n_correct = int(np.sum(np.argmax(logits, axis=1) == y))
    info = StepInfo(float(loss), None, n_correct, n_correct / max(x.shape[0], 1), False, 0)
    return grads, new_state, info


class EvalResult(NamedTuple):
    """Result of :func:`evaluate`: accuracy in [0, 1], mean cross-entropy, predicted classes (N,)."""

    accuracy: float
    loss: float
    predictions: np.ndarray


def _check_xy(x: Any, y: Any, fn: str, xname: str = "x", yname: str = "y") -> None:
    check_float(x, xname, fn)
    if x.ndim < 2:
        raise ValueError(f"{fn}: {xname} must have a leading sample axis and features, got shape {x.shape}")
    if not isinstance(y, np.ndarray) or not np.issubdtype(y.dtype, np.integer):
        got = y.dtype if isinstance(y, np.ndarray) else type(y).__name__
        raise TypeError(f"{fn}: {yname} must be an integer numpy.ndarray of class labels, got {got}")
    check_ndim(y, yname, fn, 1, "(N,)")
    if y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{fn}: {yname}.shape[0] (={y.shape[0]}) must equal {xname}.shape[0] (={x.shape[0]}), "
            "the number of samples"
        )


def evaluate(
    params: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    model: str | ModelFns,
    batch_size: int = 500,
) -> EvalResult:
    """Evaluation-mode accuracy and loss (PyTorch: ``model.eval(); with torch.no_grad(): ...``).

    Parameters
    ----------
    params, state : dict[str, ndarray]
        The weights the network computes with (for a protected model: the effective weights,
        ``saf_ref.protect.effective_weights(latents, spec)[0]``) and the running statistics.
    x : ndarray, shape (N, ...)
        Same dtype as the parameters.
    y : ndarray of int, shape (N,)
    model : str or ModelFns
        A model name (options included, e.g. ``"small_cnn@act_clip=6"``) or a pair.
    batch_size : int
        Images per forward pass. Memory and speed depend on it, and so do the last bits of ``loss``: it is
        accumulated batch by batch (the sum of each batch's mean times its size, divided by ``N``).

    Returns
    -------
    EvalResult
        ``accuracy = mean(argmax(logits) == y)``, ``loss`` = mean cross-entropy, ``predictions``.
    """
    fn = "evaluate"
    fns = model_fns(model, fn)
    _check_xy(x, y, fn)
    batch_size = check_int(batch_size, "batch_size", fn, low=1)
    predictions = np.empty(x.shape[0], dtype=np.int64)
    loss_sum = 0.0
    with blas_threads_pinned():
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            logits, _, _ = fns.inference()(params, state, xb, train=False)
            loss, _ = cross_entropy_forward(logits, yb)
            loss_sum += float(loss) * xb.shape[0]
            predictions[start : start + batch_size] = np.argmax(logits, axis=1)
    n = max(x.shape[0], 1)
    return EvalResult(float(np.mean(predictions == y)) if x.shape[0] else 0.0, loss_sum / n, predictions)


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def _augment(x: np.ndarray, how: str | None, pad: int, rng: np.random.Generator) -> np.ndarray:
    if how == "crop_flip":
        return random_crop_flip(x, pad=pad, rng=rng)
    if how == "crop":
        return random_crop(x, pad=pad, rng=rng)
    if how == "flip":
        return random_hflip(x, rng=rng)
    return x


def format_epoch(record: dict[str, Any], epochs: int) -> str:
    """One progress line, e.g. ``epoch  3/10  lr 0.05000  loss 0.4312  train 87.20%  test 90.10%
    1234 img/s  5.2 s``, plus the bit-error state when the record has one (``errors on in 12/20 batches
    (perturbed loss 0.5123)`` with the per-batch curriculum)."""
    test = "" if record["test_acc"] is None else f"  test {100 * record['test_acc']:6.2f}%"
    width = len(str(epochs))
    line = (
        f"epoch {record['epoch'] + 1:>{width}}/{epochs}  lr {record['lr']:.5f}  loss {record['loss']:.4f}  "
        f"train {100 * record['train_acc']:6.2f}%{test}  {record['images_per_s']:7.0f} img/s  "
        f"{record['seconds']:.1f} s"
    )
    if "errors_on" not in record:
        return line
    # With the per-batch curriculum, in how many steps (e.g. "errors on in 12/20 batches").
    where = f" in {record['error_batches']}/{record['batches']} batches" if "error_batches" in record else ""
    if record["errors_on"] and record.get("adversarial_loss") is not None:
        return line + (
            f"  errors on{where} (perturbed loss {record['perturbed_loss']:.4f}, "
            f"adversarial {record['adversarial_loss']:.4f})"
        )
    if record["errors_on"]:
        return line + f"  errors on{where} (perturbed loss {record['perturbed_loss']:.4f})"
    return line + "  errors off"


def _unpack_data(data: Any, fn: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    if not isinstance(data, tuple) or len(data) not in (2, 4):
        raise TypeError(
            f"{fn}: data must be a tuple (x_train, y_train) or (x_train, y_train, x_test, y_test) "
            f"(e.g. a saf_ref.data Dataset), got {type(data).__name__}"
            + (f" of length {len(data)}" if isinstance(data, tuple) else "")
        )
    x_train, y_train = data[0], data[1]
    x_test, y_test = (data[2], data[3]) if len(data) == 4 else (None, None)
    _check_xy(x_train, y_train, fn, "x_train", "y_train")
    if x_test is not None:
        _check_xy(x_test, y_test, fn, "x_test", "y_test")
    # With no sample an epoch takes no step and records a loss of 0 (an empty sum): refuse it.
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if x is not None and x.shape[0] == 0:
            raise ValueError(f"{fn}: {name} must hold at least one sample, got shape {x.shape}")
    return x_train, y_train, x_test, y_test


def _check_params(params: Any, x_train: np.ndarray, x_test: np.ndarray | None, fn: str) -> np.dtype:
    if not isinstance(params, dict) or not params:
        raise TypeError(f"{fn}: params must be a non-empty dict of numpy arrays, got {type(params).__name__}")
    dtype = next(iter(params.values())).dtype
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if x is not None and x.dtype != dtype:
            raise TypeError(
                f"{fn}: {name}.dtype (={x.dtype}) must equal the parameters' dtype (={dtype}); "
                "mixed dtypes are not promoted, cast explicitly"
            )
    return dtype


def _resolve_spec(
    spec: Any, transform: Any, randbet: Any, dtype: np.dtype | None, fn: str
) -> StorageSpec | None:
    """The storage spec the loop trains through: ``spec``, the shorthand of ``transform``, or None."""
    if spec is not None and transform is not None:
        raise ValueError(
            f"{fn}: give the transform inside the spec or as transform=, not both, got spec={spec!r} "
            f"and transform={transform!r}"
        )
    if spec is not None and not isinstance(spec, StorageSpec):
        raise TypeError(f"{fn}: spec must be None or a StorageSpec, got {describe(spec)}")
    if randbet is not None and not isinstance(randbet, RandBETConfig):
        raise TypeError(f"{fn}: randbet must be None or a RandBETConfig, got {describe(randbet)}")
    if transform is not None:
        # Stored in the parameters' own float format: encoding and decoding are exact, so this is the
        # transform alone.
        spec = default_spec(dtype.name, transform)
    if randbet is not None and spec is None:
        raise ValueError(f"{fn}: randbet needs a storage spec (spec=...), got spec=None")
    return spec


def train(
    params: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    data: tuple,
    *,
    model: str | ModelFns,
    epochs: int,
    batch_size: int = 128,
    optimizer: SGD | None = None,
    schedule: Any = None,
    spec: StorageSpec | None = None,
    transform: Any = None,
    randbet: RandBETConfig | None = None,
    augment: str | None = "crop_flip",
    pad: int = 4,
    label_smoothing: float = 0.0,
    nonfinite: str = "propagate",
    rng: np.random.Generator | int,
    verbose: bool = True,
    callback: Callable[[int, dict, dict, dict], None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    eval_batch_size: int = 500,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[dict[str, Any]]]:
    """Train a model with minibatch SGD, evaluating on the test split after every epoch.

    Parameters
    ----------
    params, state : dict[str, ndarray]
        Initial parameters (latents ``u`` with a spec or transform) and running statistics.
    data : tuple
        ``(x_train, y_train, x_test, y_test)`` (a :class:`saf_ref.data.shipped.Dataset` is one) or
        ``(x_train, y_train)``. Images ``(N, C, H, W)`` in the parameters' dtype, int labels ``(N,)``.
    model : str or ModelFns
        ``"resnet20"``, ``"resnet18_cifar"``, ``"resnet18"``, ``"small_cnn"``, ``"mlp"``, a name with
        options such as ``"small_cnn@act_clip=6"`` (see :mod:`saf_ref.nn.registry`), or a pair.
    epochs : int
        Total number of epochs (a resumed run continues up to this number).
    batch_size : int
        Training batch size; the last, smaller batch of an epoch is kept (``drop_last=False``).
    optimizer : SGD or None
        Default ``SGD(0.1, momentum=0.9, weight_decay=5e-4)``. Weight decay applies to every parameter,
        as ``torch.optim.SGD(model.parameters(), ...)``.
    schedule : object with ``lr_at(epoch)`` or None
        Learning rate per epoch (e.g. :class:`saf_ref.train.schedules.Cosine`); ``None`` keeps
        ``optimizer.lr``.
    spec : StorageSpec or None
        Train through the storage pipeline: the network computes with ``effective_weights(u, spec)``
        (format, clip, scale, transform of every tensor). None: with the parameters as they are.
    transform : str or Transform or None
        Shorthand for SAF training: ``spec = default_spec(<params' dtype>, transform)``, i.e.
        conv/linear weights ``f(u)``, every tensor stored exactly. Not together with ``spec``.
    randbet : RandBETConfig or None
        Random (``p_train``) and adversarial (``adversarial``: AdvBET) bit-error training and weight
        clipping (needs ``spec``); None: none of them.
    augment : {"crop_flip", "crop", "flip", None}
        Per-batch augmentation of the training images: random crop with ``pad`` zero padding and/or
        horizontal flip (do not flip digits).
    pad : int
        Padding of the random crop.
    label_smoothing : float
        Passed to the cross-entropy.
    nonfinite : {"propagate", "zero"}
        With a spec: what a NaN/inf read from memory becomes (training passes and evaluation).
    rng : numpy.random.Generator or int
        Source of all training randomness (shuffling, augmentation, bit errors); see the module docstring.
    verbose : bool
        Print one line per epoch (``False``: print nothing).
    callback : callable or None
        ``callback(epoch, params, state, record)`` after every epoch (``epoch`` counts from 0).
    checkpoint : path or None
        Save params, running statistics, optimizer state and the history there after every epoch
        (.npz + JSON, :mod:`saf_ref.train.checkpoint`), with what ``resume`` compares: the model, spec
        and RandBET configuration, and (metadata entry ``"training"``) ``batch_size``, the optimizer's
        fields, the learning rate of every epoch of this call, ``augment``, ``pad``,
        ``label_smoothing``, ``nonfinite``, ``eval_batch_size`` and a SHA-256 digest of each data array
        (its dtype, shape and bytes). The data are hashed once per call, only with a checkpoint.
    resume : bool
        If ``checkpoint`` exists, continue from it (the given ``params``/``state`` are then ignored);
        the result equals, bit for bit, an uninterrupted run with the same arguments and ``rng`` (the
        random streams continue from the seed stored in the checkpoint: ``rng`` is not compared). Every
        argument that changes the result must be as in the interrupted call, except ``epochs``: the
        model, spec (or transform), RandBET configuration, the settings and data listed under
        ``checkpoint``, and the learning rate of each epoch both calls have (a resumed call may run for
        more epochs, and its schedule may differ in those only). A mismatch is a ValueError naming the
        checkpoint, the setting, its value in the checkpoint and the value given. A checkpoint written
        before saf_ref recorded the ``"training"`` entry is resumed with only the model, spec and
        RandBET configuration checked. A checkpoint already at or past ``epochs`` is returned as it is:
        its params, state and whole history (which may then have more than ``epochs`` records).
    eval_batch_size : int
        Batch size for the per-epoch evaluation (the last bits of ``test_loss`` depend on it, see
        :func:`evaluate`).

    Returns
    -------
    params, state : dict[str, ndarray]
        After the last epoch (latents with a spec: store them with the same spec).
    history : list of dict
        One record per epoch: ``epoch``, ``lr``, ``loss`` (mean train-mode batch loss), ``train_acc``
        (train-mode accuracy during the epoch), ``test_acc`` and ``test_loss`` (evaluation mode after
        the epoch, of the clean stored model with a spec; None without a test split), ``seconds``
        (training time of the epoch), ``images_per_s``; with an explicit ``spec`` (or ``transform`` and a
        curriculum, whose state the records carry) also ``errors_on``, ``perturbed_loss`` (mean over the
        epoch, None when errors were off) and ``flips``; with ``randbet.adversarial`` also
        ``adversarial_loss`` (the adversarial pass's mean loss, or None).

    Notes
    -----
    - **Curriculum.** With ``randbet.curriculum_loss = t`` errors are off in the first step. With
      ``randbet.curriculum = "batch"`` (the default, the reference code's rule) every step decides the
      next: on if its clean loss was below ``1.15 t`` and the mean of its clean and perturbed losses at
      most ``t``, off otherwise (:func:`saf_ref.train.randbet.curriculum_errors_on`); the state carries
      over epochs and checkpoints. Each record then also has ``batches`` (steps), ``error_batches``
      (steps with errors on) and ``errors_on_next`` (the state the epoch left); ``errors_on`` says
      whether any step had errors, and ``perturbed_loss`` / ``adversarial_loss`` are means over those
      steps' images. With
      ``curriculum = "epoch"`` (a latch) errors are switched on at the start of epoch ``e >= 1`` if the
      mean clean loss of epoch ``e - 1`` was below ``t``, and stay on until the end
      (:func:`saf_ref.train.randbet.errors_on_after`).
    - **Weight clipping** projects the weight latents once before the first step and after every
      step; the reference code projects before every step, which is the same sequence of weights.
    - **Determinism.** Never mutates its inputs. The result depends only on the arguments, bit for bit,
      whatever the number of BLAS threads (see :mod:`saf_ref.determinism`).
    """
    fn = "train"
    fns = model_fns(model, fn)
    x_train, y_train, x_test, y_test = _unpack_data(data, fn)
    dtype = _check_params(params, x_train, x_test, fn)
    spec = _resolve_spec(spec, transform, randbet, dtype, fn)
    if spec is not None:  # e.g. float64 latents for a quantizer: refused here, in train's name
        check_encodable(params, spec.resolve({k: np.shape(v) for k, v in params.items()}, fn), fn, "params")
    # The transform= shorthand records no bit-error state, unless a curriculum (per batch or per epoch)
    # switches errors: its state must reach the next epoch and a resumed run through the records.
    switched = randbet is not None and randbet.perturbs and randbet.curriculum_loss is not None
    records_errors = spec is not None and (transform is None or switched)
    optimizer = SGD(0.1, momentum=0.9, weight_decay=5e-4) if optimizer is None else optimizer
    if not isinstance(optimizer, SGD):
        raise TypeError(f"{fn}: optimizer must be a saf_ref.train.optim.SGD, got {type(optimizer).__name__}")
    if schedule is not None and not callable(getattr(schedule, "lr_at", None)):
        raise TypeError(
            f"{fn}: schedule must be None or have an lr_at(epoch) method, got {type(schedule).__name__}"
        )
    check_choice(augment, "augment", fn, AUGMENTATIONS)
    if augment is not None and x_train.ndim != 4:
        raise ValueError(
            f"{fn}: augment={augment!r} needs images x_train of shape (N, C, H, W), got {x_train.shape}"
        )
    epochs = check_int(epochs, "epochs", fn, low=0)
    batch_size = check_int(batch_size, "batch_size", fn, low=1)
    pad = check_int(pad, "pad", fn, low=0)
    check_real(label_smoothing, "label_smoothing", fn)
    check_choice(nonfinite, "nonfinite", fn, NONFINITE_POLICIES)
    eval_batch_size = check_int(eval_batch_size, "eval_batch_size", fn, low=1)
    gen = check_rng(rng, fn)
    check_bool(verbose, "verbose", fn)
    check_bool(resume, "resume", fn)
    if resume and checkpoint is None:
        raise ValueError(f"{fn}: resume=True needs a checkpoint path, got checkpoint=None")
    if callback is not None and not callable(callback):
        raise TypeError(f"{fn}: callback must be callable or None, got {type(callback).__name__}")

    config = randbet or RandBETConfig(0.0)
    if config.adversarial is not None:
        config.adversarial.check(params, spec, model=fns, fn=fn)  # before any training
    # One draw from the caller's generator; every epoch derives its own generators from it.
    base_seed = int(gen.integers(2**63))
    if config.weight_clip is not None:
        params = clip_weights(params, config.weight_clip, roles=config.clip_roles)
    opt_state = sgd_init(params)
    errors_on = config.perturbs and config.curriculum_loss is None
    history: list[dict[str, Any]] = []
    start_epoch = 0
    identity = _run_identity(spec, randbet)
    if checkpoint is not None:  # what a resumed call must agree on besides the model, spec and config
        identity["training"] = _training_settings(
            (x_train, y_train, x_test, y_test), epochs, batch_size, optimizer, schedule, augment, pad,
            label_smoothing, nonfinite, eval_batch_size,
        )  # fmt: skip
    if resume and os.path.exists(checkpoint):
        params, state, opt_state, meta = _load_checkpoint(checkpoint, fns.name, identity, fn)
        base_seed, history, start_epoch = meta["base_seed"], meta["history"], meta["epoch"] + 1
        if history and records_errors:
            errors_on = errors_on_after(history[-1], config)

    for epoch in range(start_epoch, epochs):
        with blas_threads_pinned():
            record, params, state, opt_state = _train_epoch(
                fns, params, state, opt_state, x_train, y_train, epoch, base_seed, spec, randbet,
                errors_on, optimizer, schedule, batch_size, augment, pad, label_smoothing, nonfinite,
            )  # fmt: skip
        if x_test is not None:
            weights = params if spec is None else effective_weights(params, spec, nonfinite=nonfinite)[0]
            test = evaluate(weights, state, x_test, y_test, model=fns, batch_size=eval_batch_size)
            record["test_acc"], record["test_loss"] = test.accuracy, test.loss
        if records_errors:
            next_errors_on = errors_on_after(record, config)
        if not records_errors:
            for key in _ERROR_KEYS:
                record.pop(key, None)
        history.append(record)
        if verbose:
            print(format_epoch(record, epochs), flush=True)
        if checkpoint is not None:
            _save_checkpoint(
                checkpoint, params, state, opt_state, fns.name, epoch, base_seed, history, identity
            )
        if callback is not None:
            callback(epoch, params, state, record)
        if records_errors:
            errors_on = next_errors_on
    return params, state, history


def _epoch_lr(optimizer: SGD, schedule: Any, epoch: int) -> float:
    """The learning rate of ``epoch``: the schedule's, or ``optimizer.lr`` without one."""
    return optimizer.lr if schedule is None else float(schedule.lr_at(epoch))


def _train_epoch(
    fns, params, state, opt_state, x_train, y_train, epoch, base_seed, spec, randbet, errors_on,
    optimizer, schedule, batch_size, augment, pad, label_smoothing, nonfinite,
):  # fmt: skip
    """One pass over the training set; returns ``(record, params, state, opt_state)``.

    ``errors_on`` is the curriculum's state for the first step; with the per-batch rule every step
    updates it (:func:`saf_ref.train.randbet.curriculum_errors_on`), otherwise it holds for the epoch.
    """
    epoch_rng = np.random.default_rng([base_seed, epoch])  # batches and augmentation
    fault_rng = np.random.default_rng([base_seed, epoch, 1])  # bit-error patterns
    lr = _epoch_lr(optimizer, schedule, epoch)
    per_batch = randbet is not None and randbet.batch_curriculum
    epoch_errors_on = errors_on
    t0 = time.perf_counter()
    loss_sum, pert_sum, adv_sum, n_correct, n_seen, flips = 0.0, 0.0, 0.0, 0, 0, 0
    n_on, on_batches, n_batches = 0, 0, 0  # images and steps with errors on, steps
    for xb, yb in iterate_minibatches(x_train, y_train, batch_size, rng=epoch_rng):
        xb = _augment(xb, augment, pad, epoch_rng)
        params, state, opt_state, info = _step(
            params, state, opt_state, xb, yb, fns, optimizer, lr, spec, randbet, errors_on, fault_rng,
            label_smoothing, nonfinite,
        )  # fmt: skip
        loss_sum += info.loss * xb.shape[0]
        if info.errors_on:
            pert_sum += info.perturbed_loss * xb.shape[0]
            n_on += xb.shape[0]
            on_batches += 1
        if info.adversarial_loss is not None:
            adv_sum += info.adversarial_loss * xb.shape[0]
        n_correct += info.n_correct
        n_seen += xb.shape[0]
        flips += info.n_flips
        n_batches += 1
        if per_batch:
            errors_on = curriculum_errors_on(info.loss, info.perturbed_loss, randbet.curriculum_loss)
    seconds = time.perf_counter() - t0
    if per_batch:  # means over the steps that had errors
        any_on = on_batches > 0
        pert_mean, adv_mean = (pert_sum / n_on, adv_sum / n_on) if any_on else (None, None)
    else:  # errors on in every step or in none (the divisions are those of the code before issue 16)
        any_on = epoch_errors_on
        pert_mean = pert_sum / max(n_seen, 1) if any_on else None
        adv_mean = adv_sum / max(n_seen, 1) if any_on else None
    record = {
        "epoch": epoch,
        "lr": lr,
        "loss": loss_sum / max(n_seen, 1),
        "train_acc": n_correct / max(n_seen, 1),
        "test_acc": None,
        "test_loss": None,
        "errors_on": any_on,
        "perturbed_loss": pert_mean,
        "flips": flips,
        "seconds": seconds,
        "images_per_s": n_seen / seconds if seconds > 0 else float("inf"),
    }
    if per_batch:
        record["batches"] = n_batches
        record["error_batches"] = on_batches
        record["errors_on_next"] = errors_on
    if randbet is not None and randbet.adversarial is not None:
        record["adversarial_loss"] = adv_mean
    return record, params, state, opt_state


# --------------------------------------------------------------------------------------------------
# Checkpoints (saf_ref.train.checkpoint: .npz + JSON, never pickle)
# --------------------------------------------------------------------------------------------------


_NONFINITE = "nonfinite"  # the key of a non-finite number in a checkpoint's history
_NONFINITE_REPRS = ("nan", "inf", "-inf")


def _json_number(value: Any) -> Any:
    """``value``, or ``{"nonfinite": "nan" | "inf" | "-inf"}`` where it is a non-finite float (strict JSON
    cannot hold NaN or inf; :func:`_number_from_json` restores it, so a resumed run's history equals an
    uninterrupted one's)."""
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return {_NONFINITE: repr(float(value))}
    return value


def _number_from_json(value: Any) -> Any:
    """The inverse of :func:`_json_number` (checkpoints that stored a non-finite number as null keep
    their None)."""
    if isinstance(value, dict) and list(value) == [_NONFINITE] and value[_NONFINITE] in _NONFINITE_REPRS:
        return float(value[_NONFINITE])
    return value


def _run_identity(spec: StorageSpec | None, randbet: RandBETConfig | None) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed: the spec and the RandBET configuration (with its
    attack's settings for AdvBET), as JSON (compared after a JSON round trip, as they are read back)."""
    identity = {
        "spec": None if spec is None else spec.to_dict(),
        "config": None if randbet is None else randbet.to_dict(),
    }
    return json.loads(json.dumps(identity))


def _json_numbers(value: Any) -> Any:
    """``value`` with every non-finite float in it (nested lists and dicts too) tagged by
    :func:`_json_number`, so that it is strict JSON and compares equal to itself (NaN included)."""
    if isinstance(value, dict):
        return {k: _json_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_numbers(v) for v in value]
    return _json_number(value)


_DATA_NAMES = ("x_train", "y_train", "x_test", "y_test")
_LEARNING_RATES = "learning_rates"


def _data_digest(a: np.ndarray | None) -> str | None:
    """SHA-256 (hex) of an array's dtype string, shape and bytes in C order; None for an absent split.

    The bytes are hashed without a copy where the array is C-contiguous (a copy of CIFAR-10's training
    images would be 600 MB)."""
    if a is None:
        return None
    digest = hashlib.sha256(f"{a.dtype.str} {list(a.shape)}\n".encode())
    digest.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return digest.hexdigest()


def _training_settings(
    data, epochs, batch_size, optimizer, schedule, augment, pad, label_smoothing, nonfinite, eval_batch_size
):  # fmt: skip
    """The settings of a call of :func:`train` that a resumed call must repeat, as JSON (compared after a
    JSON round trip, as they are read back): everything that changes the result but the model, the spec,
    the RandBET configuration (:func:`_run_identity`) and ``epochs``; the learning rate of every epoch of
    this call (a resumed call compares those of the epochs both calls have); the data as digests."""
    settings = {
        "batch_size": batch_size,
        "optimizer": dataclasses.asdict(optimizer),
        _LEARNING_RATES: [_epoch_lr(optimizer, schedule, e) for e in range(epochs)],
        "augment": augment,
        "pad": pad,
        "label_smoothing": float(label_smoothing),
        "nonfinite": nonfinite,
        "eval_batch_size": eval_batch_size,
        "data": {name: _data_digest(a) for name, a in zip(_DATA_NAMES, data, strict=True)},
    }
    return json.loads(json.dumps(_json_numbers(settings), allow_nan=False))


def _check_training(path: Any, recorded: Any, given: dict[str, Any], fn: str) -> None:
    """Refuse to resume when a setting of :func:`_training_settings` differs from the checkpoint's.

    ``recorded`` is None for a checkpoint written before these settings were recorded: it is resumed
    unchecked. A key the checkpoint lacks is not compared (a setting added later, the same rule)."""
    if recorded is None:
        return
    if not isinstance(recorded, dict):
        raise ValueError(
            f"{fn}: the checkpoint {path} was not written by train (its 'training' metadata must be a "
            f"JSON object, got {type(recorded).__name__})"
        )
    for key, value in given.items():
        if key not in recorded:
            continue
        old = recorded[key]
        if key == _LEARNING_RATES:
            if not isinstance(old, list):
                raise ValueError(
                    f"{fn}: the checkpoint {path} was not written by train (its {_LEARNING_RATES!r} "
                    f"must be a list, got {type(old).__name__})"
                )
            # Only the epochs both calls have: a resumed call may train for more (or fewer) epochs.
            for epoch, (a, b) in enumerate(zip(old, value, strict=False)):
                if a != b:
                    a, b = _number_from_json(a), _number_from_json(b)  # inf, not its JSON tag
                    raise ValueError(
                        f"{fn}: the checkpoint {path} has the learning rate {a!r} at epoch {epoch} (from "
                        f"the schedule, or optimizer.lr without one), got {b!r}"
                    )
        elif isinstance(value, dict) and isinstance(old, dict):  # optimizer, data: name the field
            for field in [*value, *(k for k in old if k not in value)]:
                a, b = old.get(field), value.get(field)
                if a != b:
                    a, b = _number_from_json(a), _number_from_json(b)
                    name = (f"data {field} (sha256 of its dtype, shape and bytes)" if key == "data"
                            else f"{key}.{field}")  # fmt: skip
                    raise ValueError(f"{fn}: the checkpoint {path} has {name} {a!r}, got {b!r}")
        elif old != value:
            old, value = _number_from_json(old), _number_from_json(value)
            raise ValueError(f"{fn}: the checkpoint {path} has {key} {old!r}, got {value!r}")


def _save_checkpoint(path, params, state, opt_state, model_name, epoch, base_seed, history, identity) -> None:
    """Everything needed to continue: arrays, and (as JSON metadata) the epoch, seed, history, spec,
    RandBET configuration and the training settings (:func:`_training_settings`)."""
    # A diverged run has NaN/inf losses; strict JSON has no such numbers, so they are stored tagged.
    history = [{k: _json_number(v) for k, v in record.items()} for record in history]
    meta = {"model": model_name, "epoch": epoch, "base_seed": base_seed, "history": history, **identity}
    ckpt.save_checkpoint(path, params=params, state=state, optimizer_state=opt_state, metadata=meta)


def _load_checkpoint(path, model_name, identity, fn):
    loaded = ckpt.load_checkpoint(path)
    meta = loaded.metadata
    missing = [k for k in ("model", "epoch", "base_seed", "history") if k not in meta]
    if missing or loaded.optimizer_state is None:
        raise ValueError(
            f"{fn}: the checkpoint {path} was not written by train (metadata lacks {missing} "
            "or there is no optimizer state)"
        )
    if meta["model"] != model_name:
        raise ValueError(
            f"{fn}: the checkpoint {path} is of model {meta['model']!r}, got model {model_name!r}"
        )
    for key, value in identity.items():
        if key == "training":  # compared setting by setting, and absent from older checkpoints
            _check_training(path, meta.get(key), value, fn)
        elif meta.get(key) != value:
            raise ValueError(f"{fn}: the checkpoint {path} has {key} {meta.get(key)!r}, got {value!r}")
    meta["history"] = [{k: _number_from_json(v) for k, v in record.items()} for record in meta["history"]]
    return loaded.params, loaded.state, loaded.optimizer_state, meta
