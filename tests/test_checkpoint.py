"""Checkpoints: round trip, integrity, atomic replacement, and safe loading of foreign torch files."""

import json
import os
import pickle

import pytest
import torch

from orwcfm import checkpoint as ckpt
from orwcfm.errors import UserError
from orwcfm.models import ModelSpec, build_model


def tiny_mlp(seed=0):
    spec = ModelSpec(kind="mlp", event_shape=(2,), options={"hidden": 16, "depth": 2})
    torch.manual_seed(seed)
    return spec, build_model(spec)


def save(path, seed=0, step=5):
    spec, model = tiny_mlp(seed)
    _, ema = tiny_mlp(seed + 100)
    ckpt.save_checkpoint(path, model=model, ema_model=ema, spec=spec, kind="pretrain", step=step,
                         config={"learning_rate": 0.1}, train_state={"step": torch.tensor(step)})
    return spec, model, ema


def test_round_trip_rebuilds_the_model_from_the_sidecar(tmp_path):
    spec, model, ema = save(tmp_path / "c")
    loaded = ckpt.load_checkpoint(tmp_path / "c")
    assert loaded.step == 5 and loaded.meta["kind"] == "pretrain" and loaded.meta["config"] == {"learning_rate": 0.1}
    assert loaded.spec == spec
    t, x = torch.rand(4), torch.randn(4, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.build_model("raw")(t, x), model.eval()(t, x))
        torch.testing.assert_close(loaded.build_model("ema")(t, x), ema.eval()(t, x))
    assert int(loaded.train_state()["step"]) == 5


def test_run_folder_resolves_to_newest_and_prunes(tmp_path):
    for step in (1, 2, 3):
        save(ckpt.step_dir(tmp_path, step), step=step)
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_0000002", "step_0000003"]
    assert ckpt.load_checkpoint(tmp_path).step == 3


def test_corrupted_newest_falls_back_with_a_warning(tmp_path):
    save(ckpt.step_dir(tmp_path, 1), step=1)
    newest = ckpt.step_dir(tmp_path, 2)
    save(newest, step=2)
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (newest / "model.safetensors").write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupted"):
        assert ckpt.load_checkpoint(tmp_path).step == 1
    with pytest.raises(UserError, match="model.safetensors is corrupted"):
        ckpt.load_checkpoint(newest)


def test_overwrite_is_atomic_when_the_write_fails(tmp_path, monkeypatch):
    save(tmp_path / "c", seed=0, step=1)
    before = (tmp_path / "c" / "model.safetensors").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save(tmp_path / "c", seed=1, step=2)
    # the old checkpoint is untouched and no temporary folder is left behind
    assert (tmp_path / "c" / "model.safetensors").read_bytes() == before
    assert ckpt.load_checkpoint(tmp_path / "c").step == 1
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_architecture_mismatch_names_the_tensors(tmp_path):
    save(tmp_path / "c")
    other = build_model(ModelSpec(kind="mlp", event_shape=(2,), options={"hidden": 8, "depth": 2}))
    with pytest.raises(UserError, match="shape mismatch: .*\\(16, .*vs model \\(8,"):
        ckpt.load_weights(other, ckpt.load_checkpoint(tmp_path / "c").weights)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(UserError, match="no checkpoint found"):
        ckpt.load_checkpoint(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(UserError, match="not an orwcfm checkpoint"):
        ckpt.load_checkpoint(tmp_path)


def test_torchcfm_style_file_loads_ema_or_net(tmp_path):
    _, net = tiny_mlp(0)
    _, ema = tiny_mlp(1)
    opt = torch.optim.Adam(net.parameters())
    net(torch.rand(3), torch.randn(3, 2)).sum().backward()
    opt.step()
    # torchcfm saves DataParallel-wrapped weights under net_model / ema_model, with optimizer and scheduler
    state = {
        "net_model": {f"module.{k}": v for k, v in net.state_dict().items()},
        "ema_model": {f"module.{k}": v for k, v in ema.state_dict().items()},
        "optim": opt.state_dict(),
        "sched": {"last_epoch": 3},
        "step": 3,
    }
    torch.save(state, tmp_path / "cfm.pt")
    loaded = ckpt.load_foreign_state_dict(tmp_path / "cfm.pt")
    assert set(loaded) == set(ema.state_dict())
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(loaded[k], v)
    raw = ckpt.load_foreign_state_dict(tmp_path / "cfm.pt", key="net_model")
    for k, v in net.state_dict().items():
        torch.testing.assert_close(raw[k], v)
    assert any(not torch.equal(raw[k], loaded[k]) for k in raw)  # the two entries really differ
    with pytest.raises(UserError, match="no entry 'model'; its state-dict entries are: ema_model, net_model, optim, sched"):
        ckpt.load_foreign_state_dict(tmp_path / "cfm.pt", key="model")


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/orwcfm-pwned-by-checkpoint",))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = "/tmp/orwcfm-pwned-by-checkpoint"
    if os.path.exists(marker):
        os.remove(marker)
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"ema_model": Exploit()}, f)
    with pytest.raises(UserError, match="refused to load .*evil.pt.*could run code"):
        ckpt.load_foreign_state_dict(tmp_path / "evil.pt")
    assert not os.path.exists(marker)


def test_truncated_newest_falls_back_with_a_warning(tmp_path):
    save(ckpt.step_dir(tmp_path, 1), step=1)
    newest = ckpt.step_dir(tmp_path, 2)
    save(newest, step=2)
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a crash mid-copy, a full disk
    with pytest.warns(UserWarning, match="corrupted"):
        assert ckpt.load_checkpoint(tmp_path).step == 1


def test_python_and_numpy_random_states_survive_a_checkpoint(tmp_path):
    import random

    import numpy as np

    random.seed(3)
    np.random.seed(4)
    random.gauss(0, 1)  # leave a cached gaussian in Python's state
    state = ckpt.host_rng_state()
    torch.save(state, tmp_path / "state.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn())
    random.seed(99)
    np.random.seed(99)
    ckpt.set_host_rng_state(torch.load(tmp_path / "state.pt", weights_only=True))  # no code runs on loading
    assert (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn()) == expected
