"""saf_ref.testing: the oracle kit. Check any implementation (PyTorch, JAX, CUDA kernels, a fault-injection
tool) against saf_ref, in one command or from your own pytest.

Command line::

    saf-ref check torch                                   # PyTorch on the CPU, float32
    saf-ref check torch --dtype float64 --json report.json
    saf-ref check torch --device cuda --tf32 off          # on a GPU
    saf-ref check mypkg.backend:Backend                   # your backend (a class, factory or instance)
    saf-ref check path/to/backend.py:Backend

Python::

    from saf_ref.testing import TorchBackend, run_suite
    report = run_suite(TorchBackend(), examples=30)
    print(report.table())

pytest (in your test suite)::

    from saf_ref.testing import conformance_tests
    test_my_backend = conformance_tests(lambda: MyBackend(), examples=30)

or, with no code, ``SAF_REF_BACKEND=mypkg.backend:Backend pytest --pyargs saf_ref.testing``.

Contents (see ``saf_ref/testing/README.md`` for the protocol, the contracts and the divergences):

- :mod:`~saf_ref.testing.protocol` - the backend protocol (:class:`Backend`);
- :mod:`~saf_ref.testing.contracts` - the four tolerance tiers as assertion functions;
- :mod:`~saf_ref.testing.strategies` - hypothesis strategies with boundary values mixed in;
- :mod:`~saf_ref.testing.checks`, :mod:`~saf_ref.testing.suite` - the checks and the engine;
- :mod:`~saf_ref.testing.numpy_backend`, :mod:`~saf_ref.testing.torch_backend` - adapters;
- :mod:`~saf_ref.testing.mutants` - deliberately broken PyTorch backends (the mutation proof);
- :mod:`~saf_ref.testing.runner`, :mod:`~saf_ref.testing.pytest_plugin` - command line and pytest.

Names are imported lazily, so ``import saf_ref.testing`` needs neither hypothesis nor torch; the suite
needs hypothesis (``pip install 'saf_ref[test]'``) and the PyTorch backend torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Backend": "protocol",
    "ModelResult": "protocol",
    "describe_backend": "protocol",
    "ContractFailure": "contracts",
    "KNOWN_DIVERGENCES": "contracts",
    "assert_dot_bound": "contracts",
    "assert_exact": "contracts",
    "assert_relative": "contracts",
    "assert_ulp": "contracts",
    "NumpyBackend": "numpy_backend",
    "TorchBackend": "torch_backend",
    "SuiteOptions": "checks",
    "CHECKS": "checks",
    "Report": "suite",
    "CheckResult": "suite",
    "run_suite": "suite",
    "run_check": "suite",
    "load_backend": "runner",
    "conformance_tests": "pytest_plugin",
    "assert_conforms": "pytest_plugin",
    "MUTANTS": "mutants",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"saf_ref.testing.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'saf_ref.testing' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
