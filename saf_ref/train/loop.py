"""The training loop: minibatch SGD with augmentation, per-epoch evaluation, progress lines, checkpoints.

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

Model names
-----------
A model is named by a string, so that it pickles into worker processes (fault campaigns):
``"resnet20"``, ``"resnet18_cifar"``, ``"resnet18"``, ``"small_cnn"`` or ``"mlp"``, optionally followed
by ``@`` and options ``key=value`` separated by commas. The one option today is ``act_clip=<c>``, a ReLU
ceiling ``c > 0`` (activation clipping; see :mod:`saf_ref.nn.resnet`)::

    model_fns("small_cnn@act_clip=6")      # every ReLU is min(max(z, 0), 6), i.e. ReLU6
    model_fns("resnet20@act_clip=0.5")

See :func:`parse_model_name` for the exact grammar and :func:`format_model_name` to build one.

Everything random (initialization aside) comes from ``rng``: the shuffling and the augmentation of epoch
``e`` use ``np.random.default_rng([base_seed, e])`` with ``base_seed`` drawn once from ``rng``, so a run
resumed from a checkpoint after epoch ``e`` continues with exactly the draws of an uninterrupted run.

PyTorch equivalent: the usual ``for epoch: model.train(); for x, y in loader: loss.backward();
opt.step(); scheduler.step()`` loop, with ``model.eval()`` for testing.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from saf_ref.data.augment import iterate_minibatches, random_crop, random_crop_flip, random_hflip
from saf_ref.nn.loss import cross_entropy_backward, cross_entropy_forward
from saf_ref.nn.resnet import ARCHS, check_act_clip, resnet_backward, resnet_forward
from saf_ref.nn.small import mlp_backward, mlp_forward, small_cnn_backward, small_cnn_forward
from saf_ref.train import checkpoint as ckpt
from saf_ref.train.optim import SGD, sgd_init, sgd_step
from saf_ref.validation import check_choice, check_float, check_int, check_ndim, check_real, check_rng

__all__ = [
    "AUGMENTATIONS",
    "MODEL_NAMES",
    "MODEL_OPTIONS",
    "EvalResult",
    "ModelFns",
    "ModelName",
    "evaluate",
    "format_epoch",
    "format_model_name",
    "model_fns",
    "parse_model_name",
    "train",
    "train_step",
]

AUGMENTATIONS = ("crop_flip", "crop", "flip", None)


# --------------------------------------------------------------------------------------------------
# Models as (forward, backward) pairs
# --------------------------------------------------------------------------------------------------


class ModelFns(NamedTuple):
    """A model as two functions, the interface every saf_ref model has.

    ``forward(params, state, x, *, train, transform) -> (logits, new_state, cache)`` and
    ``backward(dlogits, cache) -> grads`` (keys of ``params``).
    """

    name: str
    forward: Callable[..., tuple[np.ndarray, dict[str, np.ndarray], Any]]
    backward: Callable[..., dict[str, np.ndarray]]


MODEL_NAMES: tuple[str, ...] = (*ARCHS, "small_cnn", "mlp")
#: Options a model name may carry after ``@`` (``"small_cnn@act_clip=6"``).
MODEL_OPTIONS: tuple[str, ...] = ("act_clip",)


class ModelName(NamedTuple):
    """A parsed model name: the architecture and its options (``act_clip=None``: plain ReLU)."""

    base: str
    act_clip: float | None = None

    @property
    def canonical(self) -> str:
        """The name in canonical form (see :func:`format_model_name`)."""
        return format_model_name(self.base, act_clip=self.act_clip)


def format_model_name(base: str, *, act_clip: float | None = None) -> str:
    """The canonical model name: ``base``, or ``f"{base}@act_clip={float(act_clip)!r}"``.

    ``format_model_name("small_cnn", act_clip=6)`` is ``"small_cnn@act_clip=6.0"``; the ceiling is
    written with ``repr(float)``, which round-trips exactly, so ``parse_model_name`` gives it back.
    """
    fn = "format_model_name"
    if not isinstance(base, str):
        raise TypeError(f"{fn}: base must be a str, got {type(base).__name__}")
    if base not in MODEL_NAMES:
        raise ValueError(f"{fn}: base must be one of {MODEL_NAMES}, got {base!r}")
    c = check_act_clip(act_clip, fn)
    return base if c is None else f"{base}@act_clip={c!r}"


def _name_error(fn: str, name: str, problem: str) -> ValueError:
    return ValueError(
        f"{fn}: model {problem}; expected '<base>' or '<base>@act_clip=<c>' with <base> in {MODEL_NAMES} "
        f"and <c> a finite number > 0 (e.g. 'small_cnn@act_clip=6'), got {name!r}"
    )


def parse_model_name(name: str, fn: str = "parse_model_name") -> ModelName:
    """Split a model name into its architecture and options.

    Grammar (no whitespace anywhere)::

        name    := base [ "@" option { "," option } ]
        base    := "resnet20" | "resnet18_cifar" | "resnet18" | "small_cnn" | "mlp"
        option  := "act_clip=" number        (a Python float literal: 6, 6.0, 0.5, 2e-1)

    Each option may appear at most once. ``act_clip`` must be finite and ``> 0``.

    Parameters
    ----------
    name : str
    fn : str
        The function name errors are reported under.

    Returns
    -------
    ModelName
        ``ModelName("small_cnn", 6.0)`` for ``"small_cnn@act_clip=6"``.

    Raises
    ------
    TypeError
        ``name`` is not a string.
    ValueError
        Unknown architecture or option, malformed ``key=value``, repeated option, whitespace, or an
        ``act_clip`` that is not a finite number ``> 0``.
    """
    if not isinstance(name, str):
        raise TypeError(f"{fn}: model must be a model name (str) or a ModelFns, got {type(name).__name__}")
    base, at, options = name.partition("@")
    if base not in MODEL_NAMES:
        # Keeps the historical message prefix "model must be one of" for an unknown architecture.
        raise ValueError(
            f"{fn}: model must be one of {MODEL_NAMES}, optionally followed by '@act_clip=<c>', got {name!r}"
        )
    if any(ch.isspace() for ch in name):
        raise _name_error(fn, name, "must not contain whitespace")
    if not at:
        return ModelName(base)
    values: dict[str, str] = {}
    for item in options.split(","):
        key, eq, value = item.partition("=")
        if not (eq and key and value):
            raise _name_error(fn, name, f"option {item!r} is not of the form key=value")
        if key not in MODEL_OPTIONS:
            raise _name_error(fn, name, f"option {key!r} is unknown (known: {MODEL_OPTIONS})")
        if key in values:
            raise _name_error(fn, name, f"option {key!r} is given twice")
        values[key] = value
    try:
        act_clip = float(values["act_clip"])
    except ValueError:
        raise _name_error(fn, name, f"act_clip={values['act_clip']!r} is not a number") from None
    if not (math.isfinite(act_clip) and act_clip > 0):
        raise _name_error(fn, name, f"act_clip={values['act_clip']!r} is not a finite number > 0")
    return ModelName(base, act_clip)


def model_fns(model: str | ModelFns, fn: str = "model_fns") -> ModelFns:
    """The :class:`ModelFns` of a model name, or ``model`` itself if it already is one.

    Parameters
    ----------
    model : str or ModelFns
        ``"resnet20"``, ``"resnet18_cifar"``, ``"resnet18"``, ``"small_cnn"``, ``"mlp"``, optionally with
        options: ``"small_cnn@act_clip=6"`` (see :func:`parse_model_name`).
    fn : str
        The function name errors are reported under.

    Returns
    -------
    ModelFns
        ``name`` is the canonical name (``"small_cnn@act_clip=6.0"`` for ``"small_cnn@act_clip=6"``);
        with an ``act_clip``, ``forward`` passes it on to the model's forward function. The forward
        functions are module-level functions or ``functools.partial`` objects (not closures), so a
        ``ModelFns`` pickles too.
    """
    if isinstance(model, ModelFns):
        return model
    parsed = parse_model_name(model, fn)
    name, base, act_clip = parsed.canonical, parsed.base, parsed.act_clip
    if base == "small_cnn":
        forward, backward = small_cnn_forward, small_cnn_backward
    elif base == "mlp":
        forward, backward = mlp_forward, mlp_backward
    else:  # a ResNet: the architecture is a keyword of resnet_forward
        forward, backward = functools.partial(resnet_forward, arch=base), resnet_backward
    if act_clip is not None:
        forward = functools.partial(forward, act_clip=act_clip)
    # Partials, not closures: they pickle, and so does the ModelFns.
    return ModelFns(name, forward, backward)


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
    transform: Any = None,
    label_smoothing: float = 0.0,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], float, int]:
    """One optimizer step on one batch (train-mode forward, cross-entropy, backward, SGD).

    Returns
    -------
    params, state, opt_state : dict
        New dicts (the inputs are not modified).
    loss : float
        The batch's mean cross-entropy (before the step).
    n_correct : int
        Correct train-mode predictions in the batch (before the step).
    """
    fns = model_fns(model, "train_step")
    logits, new_state, cache = fns.forward(params, state, x, train=True, transform=transform)
    loss, loss_cache = cross_entropy_forward(logits, y, label_smoothing=label_smoothing)
    grads = fns.backward(cross_entropy_backward(1.0, loss_cache).dlogits, cache)
    new_params, new_opt_state = sgd_step(params, grads, opt_state, optimizer, lr=lr)
    n_correct = int(np.sum(np.argmax(logits, axis=1) == y))
    return new_params, new_state, new_opt_state, float(loss), n_correct


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
    transform: Any = None,
    batch_size: int = 500,
) -> EvalResult:
    """Evaluation-mode accuracy and loss (PyTorch: ``model.eval(); with torch.no_grad(): ...``).

    Parameters
    ----------
    params, state : dict[str, ndarray]
    x : ndarray, shape (N, ...)
        Same dtype as the parameters.
    y : ndarray of int, shape (N,)
    model : str or ModelFns
        A model name (options included, e.g. ``"small_cnn@act_clip=6"``) or a pair.
    transform : weight transform or None
        As in training: conv/linear weights used are ``transform.forward(params[...])``.
    batch_size : int
        Images per forward pass (only memory and speed depend on it; results do not).

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
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        logits, _, _ = fns.forward(params, state, xb, train=False, transform=transform)
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
    1234 img/s  5.2 s``."""
    test = "" if record["test_acc"] is None else f"  test {100 * record['test_acc']:6.2f}%"
    width = len(str(epochs))
    return (
        f"epoch {record['epoch'] + 1:>{width}}/{epochs}  lr {record['lr']:.5f}  loss {record['loss']:.4f}  "
        f"train {100 * record['train_acc']:6.2f}%{test}  {record['images_per_s']:7.0f} img/s  "
        f"{record['seconds']:.1f} s"
    )


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
    return x_train, y_train, x_test, y_test


def _check_train_args(params, x_train, x_test, optimizer, schedule, augment, epochs, fn):
    if not isinstance(params, dict) or not params:
        raise TypeError(f"{fn}: params must be a non-empty dict of numpy arrays, got {type(params).__name__}")
    dtype = next(iter(params.values())).dtype
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if x is not None and x.dtype != dtype:
            raise TypeError(
                f"{fn}: {name}.dtype (={x.dtype}) must equal the parameters' dtype (={dtype}); "
                "mixed dtypes are not promoted, cast explicitly"
            )
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
    return check_int(epochs, "epochs", fn, low=0)


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
    transform: Any = None,
    augment: str | None = "crop_flip",
    pad: int = 4,
    label_smoothing: float = 0.0,
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
        Initial parameters (latents ``u`` when a ``transform`` is used) and running statistics.
    data : tuple
        ``(x_train, y_train, x_test, y_test)`` (a :class:`saf_ref.data.shipped.Dataset` is one) or
        ``(x_train, y_train)``. Images ``(N, C, H, W)`` in the parameters' dtype, int labels ``(N,)``.
    model : str or ModelFns
        ``"resnet20"``, ``"resnet18_cifar"``, ``"resnet18"``, ``"small_cnn"``, ``"mlp"``, a name with
        options such as ``"small_cnn@act_clip=6"`` (see :func:`model_fns`), or a pair.
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
    transform : weight transform or None
        Train latents ``u`` with conv/linear weights ``f(u)`` (see :mod:`saf_ref.nn.resnet`).
    augment : {"crop_flip", "crop", "flip", None}
        Per-batch augmentation of the training images: random crop with ``pad`` zero padding and/or
        horizontal flip (do not flip digits).
    pad : int
        Padding of the random crop.
    label_smoothing : float
        Passed to the cross-entropy.
    rng : numpy.random.Generator or int
        Source of all training randomness (shuffling, augmentation); see the module docstring.
    verbose : bool
        Print one line per epoch (``False``: print nothing).
    callback : callable or None
        ``callback(epoch, params, state, record)`` after every epoch (``epoch`` counts from 0).
    checkpoint : path or None
        Save params, running statistics, optimizer state and the history there after every epoch.
    resume : bool
        If ``checkpoint`` exists, continue from it (the given ``params``/``state`` are then ignored);
        the result equals an uninterrupted run with the same ``rng``.
    eval_batch_size : int
        Batch size for the per-epoch evaluation.

    Returns
    -------
    params, state : dict[str, ndarray]
        After the last epoch.
    history : list of dict
        One record per epoch: ``epoch``, ``lr``, ``loss`` (mean train-mode batch loss), ``train_acc``
        (train-mode accuracy during the epoch), ``test_acc`` (evaluation mode after the epoch, or None),
        ``test_loss``, ``seconds`` (training time of the epoch), ``images_per_s``.

    Notes
    -----
    Never mutates its inputs. The result depends only on the arguments (bit for bit on one machine
    with one BLAS configuration).
    """
    fn = "train"
    fns = model_fns(model, fn)
    x_train, y_train, x_test, y_test = _unpack_data(data, fn)
    optimizer = SGD(0.1, momentum=0.9, weight_decay=5e-4) if optimizer is None else optimizer
    epochs = _check_train_args(params, x_train, x_test, optimizer, schedule, augment, epochs, fn)
    batch_size = check_int(batch_size, "batch_size", fn, low=1)
    pad = check_int(pad, "pad", fn, low=0)
    check_real(label_smoothing, "label_smoothing", fn)
    gen = check_rng(rng, fn)
    for flag, name in ((verbose, "verbose"), (resume, "resume")):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{fn}: {name} must be a bool, got {type(flag).__name__}")
    if resume and checkpoint is None:
        raise ValueError(f"{fn}: resume=True needs a checkpoint path, got checkpoint=None")
    if callback is not None and not callable(callback):
        raise TypeError(f"{fn}: callback must be callable or None, got {type(callback).__name__}")

    # One draw from the caller's generator; every epoch derives its own generator from it.
    base_seed = int(gen.integers(2**63))
    opt_state = sgd_init(params)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume and os.path.exists(checkpoint):
        params, state, opt_state, meta = _load_checkpoint(checkpoint, fns.name, fn)
        base_seed, history, start_epoch = meta["base_seed"], meta["history"], meta["epoch"] + 1

    for epoch in range(start_epoch, epochs):
        epoch_rng = np.random.default_rng([base_seed, epoch])
        lr = optimizer.lr if schedule is None else float(schedule.lr_at(epoch))
        t0 = time.perf_counter()
        loss_sum, n_correct, n_seen = 0.0, 0, 0
        for xb, yb in iterate_minibatches(x_train, y_train, batch_size, rng=epoch_rng):
            xb = _augment(xb, augment, pad, epoch_rng)
            params, state, opt_state, loss, correct = train_step(
                params, state, opt_state, xb, yb, model=fns, optimizer=optimizer, lr=lr,
                transform=transform, label_smoothing=label_smoothing,
            )  # fmt: skip
            loss_sum += loss * xb.shape[0]
            n_correct += correct
            n_seen += xb.shape[0]
        seconds = time.perf_counter() - t0
        test = None
        if x_test is not None:
            test = evaluate(
                params, state, x_test, y_test, model=fns, transform=transform, batch_size=eval_batch_size
            )
        record = {
            "epoch": epoch,
            "lr": lr,
            "loss": loss_sum / max(n_seen, 1),
            "train_acc": n_correct / max(n_seen, 1),
            "test_acc": None if test is None else test.accuracy,
            "test_loss": None if test is None else test.loss,
            "seconds": seconds,
            "images_per_s": n_seen / seconds if seconds > 0 else float("inf"),
        }
        history.append(record)
        if verbose:
            print(format_epoch(record, epochs), flush=True)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, params, state, opt_state, fns.name, epoch, base_seed, history)
        if callback is not None:
            callback(epoch, params, state, record)
    return params, state, history


# --------------------------------------------------------------------------------------------------
# Checkpoints (saf_ref.train.checkpoint: .npz + JSON, never pickle)
# --------------------------------------------------------------------------------------------------


def _json_number(value: Any) -> Any:
    """``value``, or None where it is a non-finite float (strict JSON cannot hold NaN or inf)."""
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def _save_checkpoint(
    path, params, state, opt_state, model_name, epoch, base_seed, history, extra=None
) -> None:
    """Everything needed to continue: arrays, and (as JSON metadata) the epoch, seed and history, plus
    ``extra`` (JSON-able metadata of another trainer, e.g. :func:`saf_ref.train.randbet.train_protected`)."""
    # A diverged run has NaN/inf losses; strict JSON has no such numbers, so they are stored as null.
    history = [{k: _json_number(v) for k, v in record.items()} for record in history]
    meta = {"model": model_name, "epoch": epoch, "base_seed": base_seed, "history": history, **(extra or {})}
    ckpt.save_checkpoint(path, params=params, state=state, optimizer_state=opt_state, metadata=meta)


def _load_checkpoint(path, model_name, fn):
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
    return loaded.params, loaded.state, loaded.optimizer_state, meta
