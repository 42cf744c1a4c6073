"""Shared pytest configuration: hypothesis profiles.

``ci`` is deterministic (derandomised, fixed example budget) so a CI failure reproduces
locally with ``CI=1``; ``dev`` explores fresh random examples on every run.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", deadline=None, max_examples=60, derandomize=True, print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=40)
settings.load_profile("ci" if "CI" in os.environ else "dev")
