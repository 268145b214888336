"""saf_ref.protect: the pipeline of DESIGN.md section 1.

``u -> clip -> scale -> encode(format) -> bits -> faults -> decode -> unscale -> transform f -> w``.

- :mod:`~saf_ref.protect.transforms`: weight transforms (identity, tanh, arctan, softsign, hardtanh and
  scaled forms) with derivatives and inverses.
- :mod:`~saf_ref.protect.spec`: storage rules and specs, parameter roles.
- :mod:`~saf_ref.protect.stored`: stored models, ``store`` and ``load``.
- :mod:`~saf_ref.protect.inject`: ``inject`` (one fault model -> ``Injection(stored, faults)``) and
  ``inject_nested``.
- :mod:`~saf_ref.protect.effective`: the differentiable ``effective_weights`` used in training.
- :mod:`~saf_ref.protect.storage`: all of the above in one namespace.
- :mod:`~saf_ref.protect.scaling`: weight scaling (store ``c * W``, divide on read).
- :mod:`~saf_ref.protect.convert`: convert a pretrained model to a SAF model.
"""

from saf_ref.protect.convert import CONVERT_MODES, convert_to_saf
from saf_ref.protect.scaling import scale_constants, scale_target, weight_scaling_spec
from saf_ref.protect.storage import (
    EffectiveWeightsCache,
    Injection,
    StorageRule,
    StorageSpec,
    StoredModel,
    StoredTensor,
    default_spec,
    effective_weights,
    effective_weights_backward,
    inject,
    inject_nested,
    load,
    param_role,
    store,
)
from saf_ref.protect.transforms import TRANSFORMS, Transform, get_transform

__all__ = [
    "CONVERT_MODES",
    "EffectiveWeightsCache",
    "Injection",
    "StorageRule",
    "StorageSpec",
    "StoredModel",
    "StoredTensor",
    "TRANSFORMS",
    "Transform",
    "convert_to_saf",
    "default_spec",
    "effective_weights",
    "effective_weights_backward",
    "get_transform",
    "inject",
    "inject_nested",
    "load",
    "param_role",
    "scale_constants",
    "scale_target",
    "store",
    "weight_scaling_spec",
]
