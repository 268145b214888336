"""Training through the storage pipeline: robust quantization, weight clipping and RandBET.

This is the training side of DESIGN.md section 1. The optimizer updates latents ``u``; the network
computes with the effective weights ``w`` read back from (possibly faulty) memory::

    u ─ clip ─► encode ─► bits ─ faults ─► bits' ─ decode ─► û ─ f ─► w ─► model ─► loss
    du ◄─────── straight-through ◄──────────────────────────── f'(û) · dw ◄───────── dL/dw

Per batch, :func:`saf_ref.train.loop.train_step` (with :func:`randbet_gradients`) implements the recipe
of Stutz et al., "Bit Error Robustness for Energy-Efficient DNN Accelerators" (MLSys 2021) and "Random and
Adversarial Bit Error Robustness" (TPAMI 2022):

1. **clean pass**: ``w = effective_weights(u, spec)`` (the quantized clean weights), forward and
   backward, ``g_clean = dL(w)/du`` (straight-through);
2. **perturbed pass** (RandBET, only with ``p_train > 0`` and ``errors_on``): a fresh random bit-error
   pattern at rate ``p_train`` in the stored words, ``w~ = effective_weights(u, spec,
   faults=BitErrors(p_train), rng=rng)``,
   forward and backward, ``g_pert = dL(w~)/du`` (straight-through);
3. **update**: ``g = (g_clean + clamp(g_pert, -c, c)) / 2`` (only ``g_clean`` without errors), one SGD
   step on ``u``, then **weight clipping**: conv/linear weight latents projected onto ``[-w_max, w_max]``
   (every trained tensor with ``clip_roles=ROLES``, as the reference code).

**AdvBET** (adversarial bit-error training, TPAMI 2022) is the same recipe with the pattern chosen by an
attack on the current stored model and the step's batch instead of drawn at random:
``RandBETConfig(adversarial=saf_ref.attack.AdvBETConfig(k_train=...))``. The attack is injected through
the :class:`AdversarialErrors` protocol (this layer never imports :mod:`saf_ref.attack`); its FaultList is
replayed in the perturbed pass (``randbet_gradients(adversarial=...)``), alone or beside a random pass
(``p_train > 0``: ``g = (g_clean + clamp(g_rand) + clamp(g_adv)) / 3``). See
:mod:`saf_ref.attack.advbet` for what the reference code does and what is chosen here.

**Curriculum** (``RandBETConfig(curriculum_loss=tau)``): bit errors start off and are switched per batch
by the reference code's rule (:func:`curriculum_errors_on`, ``curriculum="batch"``, the default), or
once per epoch by a latch that never switches them off again (``curriculum="epoch"``, saf_ref's rule
before issue 16; :func:`errors_on_after`).

This module holds the per-batch algorithms (:func:`randbet_gradients`, :func:`clip_weights`, the
curriculum :func:`curriculum_errors_on` and :func:`errors_on_after`); the one training loop,
:func:`saf_ref.train.loop.train`, runs them
when it is given a storage spec and a :class:`RandBETConfig`. Without bit errors (``p_train = 0``) the
same path trains SAF models and robust quantization alone: plain training through the pipeline.

Usage::

    from saf_ref.bits.quantize import Quantizer
    from saf_ref.protect.storage import default_spec
    from saf_ref.train.loop import train
    from saf_ref.train.optim import SGD
    from saf_ref.train.randbet import RandBETConfig

    spec = default_spec(Quantizer(8, scheme="asymmetric", code="offset_binary", margin=1e-3))
    params, state, history = train(
        params, state, data, model="small_cnn", spec=spec, epochs=10, batch_size=64,
        optimizer=SGD(0.05, momentum=0.9, weight_decay=5e-4), augment=None,
        randbet=RandBETConfig(p_train=0.01, weight_clip=0.1), rng=0)

PyTorch has no built-in equivalent; the reference implementation is ``AverageWeightsTraining`` in
github.com/davidstutz/random-bit-error-robustness (``common/train/average_weights_training.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from saf_ref import validation
from saf_ref.bits.faultlist import FaultList
from saf_ref.bits.faultmodels import BitErrors
from saf_ref.nn.loss import cross_entropy_backward, cross_entropy_forward
from saf_ref.nn.registry import ModelFns, model_fns
from saf_ref.protect.spec import check_clip_roles
from saf_ref.protect.storage import (
    NONFINITE_POLICIES,
    StorageSpec,
    effective_weights,
    effective_weights_backward,
    param_role,
)

__all__ = [
    "CURRICULA",
    "CURRICULUM_MARGIN",
    "AdversarialErrors",
    "RandBETConfig",
    "RandBETGradients",
    "StepInfo",
    "clip_weights",
    "curriculum_errors_on",
    "errors_on_after",
    "randbet_gradients",
]


#: The curriculum rules of :class:`RandBETConfig`: per batch (the reference code's) or a per-epoch latch.
CURRICULA = ("batch", "epoch")
#: The per-batch rule lets errors on only while the clean loss is below ``CURRICULUM_MARGIN * tau``
#: (the reference code's ``threshold*1.15``).
CURRICULUM_MARGIN = 1.15


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


@runtime_checkable
class AdversarialErrors(Protocol):
    """What the loop needs of an attack to train on adversarial bit errors (AdvBET).

    The training layer sits below :mod:`saf_ref.attack` (DESIGN.md section 2: nothing below the attack
    imports it), so the attack is *injected*: an object built in the attack package
    (:class:`saf_ref.attack.advbet.AdvBETConfig`) is passed in ``RandBETConfig(adversarial=...)``, and
    the loop calls it through this protocol.

    Methods
    -------
    faults(params, state, x, y, *, model, spec, nonfinite) -> FaultList
        The flips the attack chooses against the model stored as ``spec`` says from the latents
        ``params``, with running statistics ``state`` (evaluation mode), on the batch ``x, y``. It must
        be deterministic (a function of its arguments) and must not modify them.
    check(params, spec, *, model, fn) -> None
        Refuse (templated ``TypeError`` / ``ValueError`` naming ``fn``) a model and spec the attack cannot
        run on, before any training.
    to_dict() -> dict
        The attack's settings as JSON (a checkpoint's identity stores them).
    """

    def faults(
        self,
        params: dict[str, np.ndarray],
        state: dict[str, np.ndarray],
        x: np.ndarray,
        y: np.ndarray,
        *,
        model: ModelFns,
        spec: StorageSpec,
        nonfinite: str,
    ) -> FaultList: ...

    def check(
        self, params: dict[str, np.ndarray], spec: StorageSpec, *, model: ModelFns, fn: str
    ) -> None: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RandBETConfig:
    """Hyperparameters of random (RandBET) and adversarial (AdvBET) bit-error training and weight clipping.

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
        ``tau``: bit errors start off and are switched by the curriculum rule ``curriculum``. None: no
        curriculum, errors on from the first step to the last.
    adversarial : AdversarialErrors or None
        AdvBET: an attack (e.g. ``saf_ref.attack.AdvBETConfig(k_train=20)``) run on every step's batch
        against the current stored model; its flips are replayed in one more perturbed pass, combined
        with the clean gradient like the random one (see :func:`randbet_gradients`). With
        ``p_train > 0`` too, every step has both perturbed passes, averaged with the clean gradient.
        None: random bit errors only.
    curriculum : {"batch", "epoch"}, default "batch"
        The rule that switches errors with ``curriculum_loss = tau`` (ignored without it):

        - ``"batch"`` (Stutz et al.'s reference code, ``average_simple_curriculum``): after every step,
          errors are on for the next step if the step's clean loss was below ``1.15 tau`` and the mean
          of its clean and perturbed losses at most ``tau``, and off otherwise; they can switch off again
          (:func:`curriculum_errors_on`);
        - ``"epoch"``: a latch, errors on from the epoch after the first whose mean clean loss fell below
          ``tau``, and never off again (:func:`errors_on_after`); saf_ref's only rule before issue 16.
    clip_roles : tuple of {"weight", "bias", "bn", "other"}, default ("weight",)
        The roles (:func:`saf_ref.protect.spec.param_role`) ``weight_clip`` projects: conv/linear
        weights only, or every trained tensor (``saf_ref.protect.spec.ROLES``) as the reference code
        does, which needs reparameterized normalisation (:mod:`saf_ref.nn.norms`: the scale is
        ``1 + weight``, so ``weight`` sits near 0) for the normalisation layers to survive the clip.
        Use the same roles in the spec (``default_spec(..., clip_roles=...)``).
    """

    p_train: float
    grad_clamp: float | None = 0.05
    weight_clip: float | None = None
    curriculum_loss: float | None = None
    adversarial: AdversarialErrors | None = None
    curriculum: str = "batch"
    clip_roles: tuple[str, ...] = ("weight",)

    def __post_init__(self) -> None:
        fn = "RandBETConfig"
        set_ = object.__setattr__  # frozen dataclass: store the validated plain floats
        set_(self, "p_train", validation.check_probability(self.p_train, "p_train", fn))
        for name in ("grad_clamp", "weight_clip", "curriculum_loss"):
            set_(self, name, validation.check_optional_positive(getattr(self, name), name, fn))
        if self.adversarial is not None and not isinstance(self.adversarial, AdversarialErrors):
            raise TypeError(
                f"{fn}: adversarial must be None or an attack with faults(), check() and to_dict() "
                f"(e.g. saf_ref.attack.AdvBETConfig), got {validation.describe(self.adversarial)}"
            )
        validation.check_choice(self.curriculum, "curriculum", fn, CURRICULA)
        set_(self, "clip_roles", check_clip_roles(self.clip_roles, fn))

    @property
    def batch_curriculum(self) -> bool:
        """Whether the loop switches errors per batch (a perturbed pass, a threshold and ``"batch"``)."""
        return self.perturbs and self.curriculum_loss is not None and self.curriculum == "batch"

    @property
    def perturbs(self) -> bool:
        """Whether the configuration has a perturbed pass at all (random or adversarial bit errors)."""
        return self.p_train > 0.0 or self.adversarial is not None

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-able numbers (as a checkpoint's metadata stores it).

        ``"adversarial"`` (the attack's own :meth:`AdversarialErrors.to_dict`) appears only with an
        attack, ``"curriculum": "batch"`` only with a threshold and the per-batch rule, and
        ``"clip_roles"`` only when not the default, so checkpoints written before these existed keep
        their identity (a run with the
        per-epoch latch resumes them; one with the per-batch rule, which trains differently, refuses to).
        """
        out = {
            "p_train": self.p_train,
            "grad_clamp": self.grad_clamp,
            "weight_clip": self.weight_clip,
            "curriculum_loss": self.curriculum_loss,
        }
        if self.adversarial is not None:
            out["adversarial"] = self.adversarial.to_dict()
        if self.curriculum_loss is not None and self.curriculum == "batch":
            out["curriculum"] = self.curriculum
        if self.clip_roles != ("weight",):
            out["clip_roles"] = list(self.clip_roles)
        return out


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
        Bits flipped in the perturbed passes, all together (0 when none ran).
    adversarial_loss : float or None
        Mean cross-entropy of the adversarial pass (AdvBET); None when it did not run.

    With two perturbed passes (random and adversarial), ``perturbed_loss`` is the mean of their losses.
    """

    loss: float
    perturbed_loss: float | None
    n_correct: int
    accuracy: float
    errors_on: bool
    n_flips: int
    adversarial_loss: float | None = None


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
    faults: BitErrors | FaultList | None,
    rng: np.random.Generator | None,
    nonfinite: str,
):
    """One pass through the pipeline: effective weights, train-mode forward, loss, latent gradient."""
    w, cache = effective_weights(params, spec, faults=faults, rng=rng, nonfinite=nonfinite)
    logits, new_state, model_cache = fns.forward(w, state, x, train=True)
    loss, loss_cache = cross_entropy_forward(logits, y, label_smoothing=label_smoothing)
    dw = fns.backward(cross_entropy_backward(1.0, loss_cache).dlogits, model_cache).params
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
    adversarial: FaultList | None = None,
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
        ``"small_cnn"``, ``"mlp"``, ``"resnet20"``, ... (see :func:`saf_ref.nn.registry.model_fns`).
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
        False skips the perturbed pass (the curriculum, :func:`errors_on_after`, uses it).
    label_smoothing : float
        Passed to the cross-entropy of both passes.
    nonfinite : {"propagate", "zero"}
        What a NaN/inf read from memory becomes (see :func:`saf_ref.protect.storage.load`); every pass.
    adversarial : FaultList, optional
        AdvBET: the flips an attack chose against these latents (e.g.
        ``saf_ref.attack.bit_flip_attack(...).faults``), replayed in one more perturbed pass after the
        random one (or alone, when ``p_train == 0`` and no ``faults``: then it is exactly
        ``faults=adversarial``). Skipped, like the random pass, when ``errors_on`` is False.

    Returns
    -------
    RandBETGradients
        With two perturbed passes, ``perturbed`` is the adversarial pass's gradient (before the clamp).

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
    clean gradient alone, undivided, as here. With a random and an adversarial pass (a population of
    two, ``g_adv`` from the pattern ``adversarial``), the same rule gives::

        update  = (g_clean + clamp(g_rand, -c, c) + clamp(g_adv, -c, c)) / 3    (summed left to right)

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
    if not isinstance(spec, StorageSpec):
        raise TypeError(
            f"{fn}: spec must be a StorageSpec (e.g. default_spec()), got {validation.describe(spec)}"
        )
    p_train = validation.check_probability(p_train, "p_train", fn)
    grad_clamp = validation.check_optional_positive(grad_clamp, "grad_clamp", fn)
    errors_on = validation.check_bool(errors_on, "errors_on", fn)
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
    if adversarial is not None and not isinstance(adversarial, FaultList):
        raise TypeError(
            f"{fn}: adversarial must be None or a FaultList, got {validation.describe(adversarial)}"
        )
    random_pass = errors_on and (p_train > 0.0 or faults is not None)
    adversarial_pass = errors_on and adversarial is not None
    if random_pass and faults is None:
        gen = validation.check_rng(rng, fn)
    elif rng is not None:
        validation.check_rng(rng, fn)  # unused, but a wrong type is still a mistake worth reporting

    du_clean, new_state, loss, logits, _ = _pass(
        fns, params, state, x, y, spec, label_smoothing, None, None, nonfinite
    )
    n_correct = int(np.sum(np.argmax(logits, axis=1) == y))
    accuracy = n_correct / max(x.shape[0], 1)
    if not (random_pass or adversarial_pass):
        info = StepInfo(loss, None, n_correct, accuracy, False, 0)
        return RandBETGradients(du_clean, du_clean, None, new_state, info)

    patterns = []
    if random_pass:  # a replayed pattern, or a fresh one drawn at p_train
        patterns.append((faults, None) if faults is not None else (BitErrors(p_train), gen))
    if adversarial_pass:
        patterns.append((adversarial, None))
    # Every perturbed pass starts from the same running statistics; its updated ones are discarded.
    passes = [
        _pass(fns, params, state, x, y, spec, label_smoothing, pattern, pattern_rng, nonfinite)
        for pattern, pattern_rng in patterns
    ]
    update = _average(du_clean, [du for du, *_ in passes], grad_clamp)
    losses = [pert_loss for _, _, pert_loss, _, _ in passes]
    n_flips = sum(n for *_, n in passes)
    pert_loss = losses[0] if len(losses) == 1 else sum(losses) / len(losses)
    adv_loss = losses[-1] if adversarial_pass else None
    info = StepInfo(loss, pert_loss, n_correct, accuracy, True, n_flips, adv_loss)
    return RandBETGradients(update, du_clean, passes[-1][0], new_state, info)


def _average(
    du_clean: dict[str, np.ndarray], perturbed: list[dict[str, np.ndarray]], grad_clamp: float | None
) -> dict[str, np.ndarray]:
    """``(g_clean + sum_i clamp(g_i)) / (n + 1)`` per parameter, the sum taken left to right."""
    update = {}
    for name, g_clean in du_clean.items():
        total = g_clean
        for du in perturbed:
            g_pert = du[name]
            if grad_clamp is not None:
                c = g_pert.dtype.type(grad_clamp)
                g_pert = np.clip(g_pert, -c, c)  # NaN stays NaN
            total = total + g_pert
        if len(perturbed) == 1:
            # Halving is exact in binary floating point (barring underflow): one rounding, in the sum.
            update[name] = np.asarray(total * g_clean.dtype.type(0.5))
        else:
            update[name] = np.asarray(total / g_clean.dtype.type(len(perturbed) + 1))
    return update


def clip_weights(
    params: dict[str, np.ndarray], weight_clip: float, *, roles: tuple[str, ...] = ("weight",)
) -> dict[str, np.ndarray]:
    """Weight clipping: project conv/linear weights (or every tensor of ``roles``) onto
    ``[-weight_clip, weight_clip]``.

    PyTorch equivalent: ``for w in conv_and_linear_weights: w.data.clamp_(-c, c)`` after
    ``optimizer.step()`` (``for w in model.parameters()`` with every role, the reference code's
    ``BoxProjection``).

    Parameters
    ----------
    params : dict str -> ndarray
        Latents; the parameters whose role (see :func:`saf_ref.protect.storage.param_role`) is in
        ``roles`` are clipped, the others returned unchanged. Not modified.
    weight_clip : float
        ``w_max > 0``, rounded to each parameter's dtype.
    roles : tuple of {"weight", "bias", "bn", "other"}
        Default ``("weight",)``: ``*.weight`` with ``ndim >= 2`` (conv/linear weights);
        ``saf_ref.protect.spec.ROLES``: every tensor, biases and normalisation parameters included.

    Returns
    -------
    dict str -> ndarray
        A new dict (clipped tensors are new arrays; the others are the same objects).

    Math
    ----
    ``u <- min(max(u, -w_max), w_max)`` elementwise (the Euclidean projection onto the box).

    Notes
    -----
    The reference code projects every trainable tensor of its models, normalisation parameters included,
    and reparameterizes its normalisation layers (scale ``1 + weight``) so that this does not bound the
    scale near 0 (``roles=ROLES`` with ``norm="group"``/``"batch"`` and ``reparam=True`` models,
    :mod:`saf_ref.nn.norms`). The default leaves biases and normalisation parameters alone, so that
    clipping bounds the weights a bit error can corrupt without constraining a plain batch-norm scale
    (which sits near 1 and would be cut to ``w_max``).
    """
    fn = "clip_weights"
    _check_params(params, fn)
    weight_clip = validation.check_optional_positive(weight_clip, "weight_clip", fn)
    if weight_clip is None:
        raise ValueError(f"{fn}: weight_clip must be a finite positive number, got None")
    roles = check_clip_roles(roles, fn)
    shapes = {k: v.shape for k, v in params.items()}
    out = {}
    for name, u in params.items():
        if param_role(name, shapes) in roles:
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


def curriculum_errors_on(loss: float, perturbed_loss: float | None, threshold: float) -> bool:
    """The per-batch curriculum of Stutz et al.: whether bit errors are on in the step after this one.

    The reference code's ``average_simple_curriculum`` (``experiments/mlsys/common.py`` of
    github.com/davidstutz/random-bit-error-robustness), called after every optimizer step.

    Parameters
    ----------
    loss : float
        The step's clean loss (train mode, before the update).
    perturbed_loss : float or None
        The step's perturbed loss (the mean over its perturbed passes); None when errors were off.
    threshold : float
        ``tau`` (``RandBETConfig.curriculum_loss``).

    Returns
    -------
    bool
        Whether the next step has its perturbed passes.

    Math
    ----
    With ``P`` the perturbed loss, or 0 when errors were off (the reference code's
    ``population_perturbed_loss`` starts at 0 and stays there without a perturbed pass)::

        on_next = (loss < 1.15 tau) and ((loss + P) / 2 <= tau)

    So from off, errors come on as soon as the clean loss is below ``1.15 tau`` (``loss / 2 <= tau``
    then holds); from on, they go off when the clean loss reaches ``1.15 tau`` or the mean of the clean
    and perturbed losses exceeds ``tau``. A NaN clean loss switches them off (``loss < 1.15 tau`` is
    false); a NaN perturbed loss alone does not (``average > tau`` is false), as in the reference code.
    """
    p = 0.0 if perturbed_loss is None else perturbed_loss
    # The reference's comparisons, in its order: loss < threshold*1.15, then average > threshold -> off.
    return bool(loss < threshold * CURRICULUM_MARGIN and not (loss + p) / 2 > threshold)


def errors_on_after(record: dict[str, Any], config: RandBETConfig) -> bool:
    """Whether bit errors are on at the start of the epoch after ``record``'s (a history record of
    :func:`saf_ref.train.loop.train`, with its ``errors_on`` and ``loss``).

    With the per-batch rule (``config.curriculum == "batch"`` and a threshold) this is the state the
    epoch's last step left, ``record["errors_on_next"]``. Otherwise the curriculum is a latch: once on,
    errors stay on; off, they switch on when the epoch's mean clean loss fell below
    ``config.curriculum_loss`` (a loss stored as None, i.e. non-finite, never does).
    """
    if config.batch_curriculum:
        return bool(record["errors_on_next"])
    if record["errors_on"] or not config.perturbs or config.curriculum_loss is None:
        return bool(record["errors_on"])
    loss = record["loss"]
    return loss is not None and loss < config.curriculum_loss
