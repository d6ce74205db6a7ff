"""Hypothesis settings for the property tests.

CI runs a fixed, derandomised set of examples (the same on every run, as root and as
nobody, with no example database written into the tree); ``EXECGATE_HYPOTHESIS=long`` draws
fresh random examples, many more of them, for a long local run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("EXECGATE_HYPOTHESIS", "ci"))
