"""``pytest --pyargs saf_ref.testing``: the conformance suite on a backend named by environment variables.

=====================  ==========================================================  ==================
variable               meaning                                                     default
=====================  ==========================================================  ==================
SAF_REF_BACKEND        ``numpy``, ``torch``, ``module:Name`` or ``file.py:Name``   ``numpy``
SAF_REF_DEVICE         passed to the backend                                       (its default)
SAF_REF_DTYPE          ``float32`` or ``float64``                                  (its default)
SAF_REF_EXAMPLES       generated examples per check                                30
SAF_REF_SEED           seed of the example generation                              0
SAF_REF_E4M3_OVERFLOW  ``ieee`` or ``saturate``                                    ``ieee``
SAF_REF_NARROWING      ``direct`` or ``via-float32``                               ``direct``
SAF_REF_STRICT         ``1``: known divergences fail                               ``0``
=====================  ==========================================================  ==================

Example: ``SAF_REF_BACKEND=torch SAF_REF_DEVICE=cuda pytest --pyargs saf_ref.testing -q``.
This module is not part of saf_ref's own test run (``testpaths`` is ``tests``).
"""

import os

import pytest

pytest.importorskip("hypothesis")

from saf_ref.testing.pytest_plugin import conformance_tests  # noqa: E402
from saf_ref.testing.runner import load_backend  # noqa: E402


def backend_from_environment():
    """The backend named by ``SAF_REF_BACKEND`` (and ``SAF_REF_DEVICE``, ``SAF_REF_DTYPE``)."""
    return load_backend(
        os.environ.get("SAF_REF_BACKEND", "numpy"),
        device=os.environ.get("SAF_REF_DEVICE") or None,
        dtype=os.environ.get("SAF_REF_DTYPE") or None,
    )


test_conformance = conformance_tests(
    backend_from_environment,
    examples=int(os.environ.get("SAF_REF_EXAMPLES", "30")),
    seed=int(os.environ.get("SAF_REF_SEED", "0")),
    e4m3_overflow=os.environ.get("SAF_REF_E4M3_OVERFLOW", "ieee"),
    narrowing=os.environ.get("SAF_REF_NARROWING", "direct"),
    strict=os.environ.get("SAF_REF_STRICT", "0") == "1",
)
