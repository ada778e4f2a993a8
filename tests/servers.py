"""What a test does when a server it needs (PostgreSQL, Redis, their binaries) is missing.

On a developer's machine it skips with a message that says what is missing and how to point
the tests elsewhere. Under CI (`CI` set, as every CI system does) it fails with that message:
CI must run the several-replicas tests, and a skip there would pass without them.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason} (CI must run this test; unset CI to skip it)", pytrace=False)
    pytest.skip(reason)
