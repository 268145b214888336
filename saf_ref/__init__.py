"""saf_ref: a pure-NumPy, deterministic reference implementation of fault-tolerant neural networks.

Subpackages (imports point downward only):

- :mod:`saf_ref.bits`: bit-exact number formats (IEEE float64/32/16, bfloat16, FP8, fixed point,
  per-tensor quantizers) and fault models. Knows nothing of networks.
- :mod:`saf_ref.nn`: the network stack as pure forward/backward pairs, with naive loop references.
- :mod:`saf_ref.protect`: weight transforms and the storage pipeline ``u -> bits -> faults -> f(u_hat)``.
- :mod:`saf_ref.train`: SGD, schedules, training loop, checkpoints.
- :mod:`saf_ref.data`: shipped datasets and loaders.
- :mod:`saf_ref.testing`: the oracle kit.
"""

__version__ = "0.1.0"
