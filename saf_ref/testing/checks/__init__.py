"""The checks of the conformance suite: one per backend method (and format), each with its contract tier.

A :class:`Check` pairs a hypothesis strategy of cases with a function that runs one case on the backend
and on saf_ref and applies a contract of :mod:`saf_ref.testing.contracts`. The suite engine
(:mod:`saf_ref.testing.suite`) drives it. Every check

- feeds its boundary examples first (``Check.explicit``; ``SuiteOptions.boundary_examples``), then
  hypothesis-generated cases;
- verifies that the backend returned the right dtype and shape and did not modify its inputs;
- treats ``NotImplementedError`` from the backend as "this case is not supported" (a check with no
  supported case is reported as skipped);
- reports the worst ``error / bound`` ratio and the known divergences it accepted.

References: saf_ref in float64 on the same inputs (``ref64``) for the tolerance tiers, saf_ref in the
result's own precision for the exact tier, and saf_ref in float32 for the relative tier.

Modules, one idea each:

- :mod:`~saf_ref.testing.checks.core` - options, context, the check record, result helpers;
- :mod:`~saf_ref.testing.checks.codecs` - saf_ref.bits: IEEE codecs, bit flips, FaultLists, quantizer;
- :mod:`~saf_ref.testing.checks.elementwise` - weight transforms, ReLU, the SGD step;
- :mod:`~saf_ref.testing.checks.layers` - pooling, conv2d, linear, batch norm, cross-entropy;
- :mod:`~saf_ref.testing.checks.models` - whole ResNets, with and without a weight transform;
- :mod:`~saf_ref.testing.checks.registry` - every check in report order (:data:`CHECKS`).
"""

from saf_ref.testing.checks.core import Check, Context, SuiteOptions, Unsupported
from saf_ref.testing.checks.registry import CHECKS, all_checks

__all__ = ["CHECKS", "Check", "Context", "SuiteOptions", "Unsupported", "all_checks"]
