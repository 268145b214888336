"""Shared test configuration: hypothesis profiles.

- ``ci`` (selected when the environment variable ``CI`` is set): derandomized, no example database, no
  deadline, so a CI run is reproducible and never flaky on a loaded machine.
- ``dev`` (the default elsewhere): more examples, still no deadline.

Select one explicitly with ``pytest --hypothesis-profile=NAME``.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=60,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=200,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
