"""The README's setting from the command line (the cifar10-clip preset) at tiny size on a CPU: a torchcfm-layout
.pt reference (net_model, ema_model, optim, sched, step) loaded into the adm-unet the preset names, the CLIP prompt
reward on a tiny CLIP written in the real format; a mismatched UNet is one line naming the first mismatched tensors;
a .pt reference without ref_model is one line."""

import json
import re

import pytest
import torch

from orwcfm.cli import main
from orwcfm.config import finetune_config
from orwcfm.models import ModelSpec, build_model

from .tinyclip import tiny_clip

TINY = {"num_res_blocks": 1, "num_channels": 64, "channel_mult": [1, 2], "num_heads": 2, "num_head_channels": -1,
        "attention_resolutions": "8", "dropout": 0.1}


def torchcfm_file(path, options, seed=0):
    """A checkpoint in the layout of torchcfm's otcfm_cifar10_weights_step_400000.pt (EMA weights perturbed so that
    they differ from net_model)."""
    torch.manual_seed(seed)
    net = build_model(ModelSpec("adm-unet", (3, 16, 16), options))
    ema = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    torch.save({"net_model": net.state_dict(), "ema_model": ema, "optim": {"state": {}, "param_groups": []},
                "sched": {"last_epoch": 7}, "step": 400000}, path)
    return ema


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    tiny_clip(folder)
    return folder


def run(tmp_path, clip, *sets):
    return main(["finetune", "--config", "cifar10-clip", "--out", str(tmp_path / "run"), "--no-progress", "--set",
                 f"reward_options.model_path={clip}", "ref_model.event_shape=[3, 16, 16]",
                 *(f"ref_model.options.{k}={json.dumps(v)}" for k, v in TINY.items()),
                 "batch_size=8", "buffer_size=16", "epochs=2", "steps_per_epoch=2", "eval_samples=8", "eval_every=2",
                 "warmup_steps=0", "log_every=1", "sampling.steps=2", "eval_sampling.steps=2", *sets])


def test_the_preset_is_the_readmes_setting():
    cfg = finetune_config(config_file="cifar10-clip")
    assert (cfg.learning_rate, cfg.warmup_steps, cfg.w2_coefficient, cfg.temperature, cfg.grad_clip, cfg.batch_size) \
        == (2e-4, 5000, 1.0, 0.5, 1.0, 128)
    assert list(cfg.text_prompts) == ["An image of dog", "Not an image of dog"]
    model = build_model(ModelSpec.from_dict(cfg.ref_model))
    assert sum(p.numel() for p in model.parameters()) == 35_746_307  # torchcfm's UNetModelWrapper of the README


@pytest.mark.slow
def test_a_torchcfm_checkpoint_fine_tuned_from_the_command_line(tmp_path, clip):
    ema = torchcfm_file(tmp_path / "otcfm.pt", TINY)
    assert run(tmp_path, clip, f"ref_path={tmp_path / 'otcfm.pt'}") == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["reward"] == "clip" and summary["steps"] == 4
    assert [row["epoch"] for row in summary["curve"]] == [0, 2]  # eval_every 2 over 2 epochs
    from orwcfm.checkpoint import load_checkpoint

    loaded = load_checkpoint(tmp_path / "run")
    reference_sha = loaded.meta["reference"]["sha256"]
    from orwcfm.finetune.trainer import fingerprint

    ref = build_model(ModelSpec("adm-unet", (3, 16, 16), TINY))
    ref.load_state_dict(ema)  # the run's reference is the file's EMA weights (ref_weights: ema)
    assert reference_sha == fingerprint(ref)


@pytest.mark.parametrize("sets, message", [
    (["ref_model.options.num_channels=32"], r"do not fit this model .*shape mismatch: "),
    (["ref_model=null"], r"is a single file .*say which network to load it into with ref_model"),
])
def test_a_reference_that_does_not_fit_is_one_line(tmp_path, capsys, clip, sets, message):
    torchcfm_file(tmp_path / "otcfm.pt", TINY)
    capsys.readouterr()
    assert run(tmp_path, clip, f"ref_path={tmp_path / 'otcfm.pt'}", *sets) == 2
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("orwcfm")]  # (transformers prints its loading bar)
    assert len(ours) == 1 and re.search(message, ours[0]) and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()
