"""The registry: every check of the suite, in report order (bits, protect, nn, train, model)."""

from __future__ import annotations

from saf_ref.testing.checks.codecs import codec_checks
from saf_ref.testing.checks.core import Check
from saf_ref.testing.checks.elementwise import relu_checks, sgd_checks, transform_checks
from saf_ref.testing.checks.layers import layer_checks, pool_checks
from saf_ref.testing.checks.models import model_checks

__all__ = ["CHECKS", "all_checks"]


def all_checks() -> list[Check]:
    """Every check, in report order: bits, protect, nn, train, model."""
    return [
        *codec_checks(),
        *transform_checks(),
        *relu_checks(),
        *pool_checks(),
        *layer_checks(),
        *sgd_checks(),
        *model_checks(),
    ]


CHECKS: tuple[str, ...] = tuple(c.name for c in all_checks())
