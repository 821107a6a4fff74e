"""What every test shares: a private cache folder.

Tuning records live under ``$XDG_CACHE_HOME/edgeseg/tuning`` and ``Model(engine="auto")`` reads them: a record
left there by another run on the same machine (another test session, a user's ``edgeseg tune``) would change
which engine a test gets. Every test, and every process a test starts, uses a fresh folder instead.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous
