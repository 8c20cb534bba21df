"""Shared fixtures: one cache of built-in assets (digits classifier, built-in references) per test session."""

import pytest


@pytest.fixture(scope="session")
def orwcfm_cache(tmp_path_factory):
    """A cache folder shared by the whole session, so the digits classifier is trained once (~5 s)."""
    return tmp_path_factory.mktemp("orwcfm-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(orwcfm_cache, monkeypatch):
    # Code that falls back to $ORWCFM_CACHE must never touch the user's ~/.cache during tests.
    monkeypatch.setenv("ORWCFM_CACHE", str(orwcfm_cache))
