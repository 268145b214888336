"""Run the conformance suite from pytest: one test per check, skipped or failed with the suite's message.

In your test suite::

    # tests/test_backend_conformance.py
    from saf_ref.testing import conformance_tests
    from mypkg.backend import MyBackend

    test_conformance = conformance_tests(MyBackend, examples=30)             # one test per check
    test_conformance_f64 = conformance_tests(lambda: MyBackend(dtype="float64"), only=["conv2d*"])

Each check becomes a parametrized test (``test_conformance[encode[bfloat16]]``): a missing method or
``NotImplementedError`` skips it, a contract violation fails it with the message (tensor, element, got
and expected, bound, reproduction). Known divergences pass (``strict=True`` fails them).

Without writing a test: ``SAF_REF_BACKEND=mypkg.backend:MyBackend pytest --pyargs saf_ref.testing`` runs
``saf_ref/testing/test_conformance.py``, configured by environment variables (see that module).

:func:`assert_conforms` is the one-call form: it runs the whole suite and raises ``AssertionError`` with
every failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from saf_ref.testing.checks import SuiteOptions
from saf_ref.testing.protocol import METHODS
from saf_ref.testing.suite import Report, run_check, run_suite, select_checks

__all__ = ["assert_conforms", "conformance_tests"]


def _is_factory(obj: Any) -> bool:
    """A class or a function that builds a backend (rather than a backend instance)."""
    return isinstance(obj, type) or (callable(obj) and not any(hasattr(obj, m) for m in METHODS))


def assert_conforms(
    backend: Any, *, only: Iterable[str] | None = None, skip: Iterable[str] | None = None, **options: Any
) -> Report:
    """Run the suite on ``backend`` (an instance); raise ``AssertionError`` listing every failure.

    ``options`` are the fields of :class:`~saf_ref.testing.checks.SuiteOptions`. Returns the report.
    """
    report = run_suite(backend, only=only, skip=skip, **options)
    if not report.ok:
        raise AssertionError(
            f"{report.backend} fails the saf_ref conformance suite:\n\n{report.failures_text()}"
        )
    return report


def conformance_tests(
    backend: Any | Callable[[], Any],
    *,
    only: Iterable[str] | None = None,
    skip: Iterable[str] | None = None,
    **options: Any,
):
    """A pytest test function parametrized over the checks; assign it to a ``test_*`` name in a module.

    Parameters
    ----------
    backend : backend instance, class or factory
        A class or factory is called once, when the first test runs.
    only, skip : iterable of str
        fnmatch patterns on check names.
    **options
        Fields of :class:`~saf_ref.testing.checks.SuiteOptions` (``examples``, ``seed``,
        ``e4m3_overflow``, ``strict``, ...).
    """
    import pytest

    opts = SuiteOptions(**options)
    checks = {c.name: c for c in select_checks(only, skip)}
    cache: dict[str, Any] = {}

    def get_backend() -> Any:
        if "backend" not in cache:
            cache["backend"] = backend() if _is_factory(backend) else backend
        return cache["backend"]

    @pytest.mark.parametrize("check", list(checks))
    def test_conformance(check: str) -> None:
        result = run_check(checks[check], get_backend(), opts)
        if result.status == "skip":
            pytest.skip(result.message)
        if result.status == "fail":
            pytest.fail(result.message, pytrace=False)
        if result.status == "known divergence" and opts.strict:
            pytest.fail(f"known divergences with strict=True: {result.divergences}", pytrace=False)

    return test_conformance
