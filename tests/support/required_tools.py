"""What a test does when a tool it runs (chromium, nginx, prometheus) is
missing: skip when run by hand, fail under bin/test (which installed every
one, and says so with EDGE_TEST_COMPLETE=1) or when CI is set, so a suite
that silently skipped what it is meant to test never passes as green."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(message: str) -> NoReturn:
    if os.environ.get("EDGE_TEST_COMPLETE") or os.environ.get("CI"):
        pytest.fail(f"{message}; bin/test installs it, so this is a failure, not a skip", pytrace=False)
    pytest.skip(message)
