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


@pytest.fixture(scope="session")
def toy_reference(tmp_path_factory):
    """A small 2-D flow (8 gaussians, MLP), enough steps to be a real, non-trivial velocity field; its checkpoint."""
    from orwcfm.config import pretrain_config
    from orwcfm.train import pretrain

    cfg = pretrain_config(data={"name": "8gaussians"}, steps=150, batch_size=256, learning_rate=3e-3, warmup_steps=10,
                          checkpoint_every=150, num_samples=100, log_every=50,
                          model={"kind": "mlp", "options": {"hidden": 64, "depth": 2}})
    return pretrain(cfg, tmp_path_factory.mktemp("toy-ref"), progress=False).checkpoint


@pytest.fixture(scope="session")
def tiny_sd3_folder(tmp_path_factory):
    """A tiny random SD3 pipeline saved in diffusers' layout (t2i extra); tests that change it load their own."""
    pytest.importorskip("diffusers", reason="the t2i extra (pip install 'orwcfm[t2i]'); dev installs it, so CI runs this")
    from orwcfm.t2i.tiny import write_tiny_sd3

    return write_tiny_sd3(tmp_path_factory.mktemp("tiny-sd3") / "pipe")


@pytest.fixture(scope="session")
def tiny_sd3(tiny_sd3_folder):
    """The tiny SD3 pipeline loaded once for the tests that only read it."""
    from orwcfm.t2i.load import load_pipeline

    return load_pipeline(tiny_sd3_folder)


@pytest.fixture(scope="session")
def tiny_flux_folder(tmp_path_factory):
    """A tiny random Flux pipeline saved in diffusers' layout (t2i extra); tests that change it load their own."""
    pytest.importorskip("diffusers", reason="the t2i extra (pip install 'orwcfm[t2i]'); dev installs it, so CI runs this")
    from orwcfm.t2i.tiny import write_tiny_flux

    return write_tiny_flux(tmp_path_factory.mktemp("tiny-flux") / "pipe")


@pytest.fixture(scope="session")
def tiny_flux(tiny_flux_folder):
    """The tiny Flux pipeline loaded once for the tests that only read it."""
    from orwcfm.t2i.load import load_pipeline

    return load_pipeline(tiny_flux_folder)
