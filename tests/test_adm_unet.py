"""ADMUNet against torchcfm's own UNetModelWrapper (its weights and outputs stored in tests/data by
make_torchcfm_unet_fixture.py), torchcfm-layout checkpoint files, constructor errors, the registry entry and the
call conventions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orwcfm.checkpoint import load_checkpoint, load_foreign_state_dict, load_weights, save_checkpoint
from orwcfm.conditions import Labels
from orwcfm.errors import UserError
from orwcfm.models import ADMUNet, ModelSpec, build_model, default_spec, num_parameters

FIXTURE = Path(__file__).parent / "data" / "torchcfm_unet_fixture.pt"
README_PARAMETERS = 35_746_307  # torchcfm 1.0.7's UNetModelWrapper, README configuration


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


def float_state(entry: dict) -> dict[str, torch.Tensor]:
    """The stored weights (float16 values, exactly those torchcfm computed with) as float32."""
    return {k: v.float() for k, v in entry["state_dict"].items()}


def loaded(entry: dict) -> ADMUNet:
    torch.manual_seed(123)  # another initialisation than torchcfm's: every weight must come from the file
    model = ADMUNet(**entry["kwargs"])
    model.load_state_dict(float_state(entry), strict=True)
    return model.eval()


def run(model: ADMUNet, entry: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(entry["t"], entry["x"], entry["y"]) if "y" in entry else model(entry["t"], entry["x"])


def test_fixture_is_torchcfm_and_not_degenerate(fixture):
    assert fixture["torchcfm_version"] == "1.0.7"
    assert set(fixture["configs"]) == {"plain", "scale_shift_updown", "class_cond"}
    for entry in fixture["configs"].values():
        # A zero or near-constant oracle would be matched by a network that ignores most of its layers.
        assert entry["output"].std() > 0.2
        assert entry["output"].shape[0] == 3


@pytest.mark.parametrize("name", ["plain", "scale_shift_updown", "class_cond"])
def test_reproduces_torchcfm_outputs(fixture, name):
    entry = fixture["configs"][name]
    model = loaded(entry)
    assert list(model.state_dict()) == list(entry["state_dict"])  # torchcfm's keys, in torchcfm's order
    out = run(model, entry)
    assert out.shape == entry["output"].shape
    torch.testing.assert_close(out, entry["output"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["plain", "scale_shift_updown", "class_cond"])
def test_outputs_depend_on_every_input(fixture, name):
    """The oracle comparison means something only if t, x (and y) all move the output far beyond its tolerance
    (a 32-group GroupNorm at width 32 would cancel an added embedding: an implementation ignoring t would pass)."""
    entry = fixture["configs"][name]
    model, ref = loaded(entry), entry["output"]
    y = (entry["y"],) if "y" in entry else ()
    with torch.no_grad():
        assert (model((entry["t"] + 0.25) % 1, entry["x"], *y) - ref).abs().max() > 1e-3
        assert (model(entry["t"], entry["x"] + 0.1, *y) - ref).abs().max() > 1e-3
        if y:
            assert (model(entry["t"], entry["x"], (entry["y"] + 1) % 5) - ref).abs().max() > 1e-3


def test_readme_configuration_matches_torchcfm_keys_shapes_and_count(fixture):
    readme = fixture["readme"]
    assert readme["kwargs"] == {"dim": [3, 32, 32], "num_channels": 128, "num_res_blocks": 2, "num_heads": 4,
                                "num_head_channels": 64, "attention_resolutions": "16", "dropout": 0.1}
    model = ADMUNet((3, 32, 32), num_channels=128, num_res_blocks=2, num_heads=4, num_head_channels=64,
                    attention_resolutions="16", dropout=0.1)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == readme["shapes"]
    assert list(model.state_dict()) == list(readme["shapes"])
    assert num_parameters(model) == readme["num_parameters"] == README_PARAMETERS
    assert model.channel_mult == (1, 2, 2, 2)  # channel_mult=None -> torchcfm's default for 32-pixel images


def torchcfm_file(path: Path, ema: dict, raw: dict) -> Path:
    """A file laid out like torchcfm's released checkpoints."""
    torch.save({"net_model": raw, "ema_model": ema,
                "optim": {"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.zeros(3)}},
                          "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "params": [0]}]},
                "sched": {"last_epoch": 7, "base_lrs": [2e-4]}, "step": 7}, path)
    return path


def test_torchcfm_checkpoint_file_loads_through_the_foreign_loader(fixture, tmp_path):
    entry = fixture["configs"]["plain"]
    ema = float_state(entry)
    raw = {k: v + 1.0 for k, v in ema.items()}
    path = torchcfm_file(tmp_path / "otcfm_weights_step_7.pt", ema, raw)
    model = ADMUNet(**entry["kwargs"]).eval()
    load_weights(model, load_foreign_state_dict(path), source=str(path))  # ema_model by default
    torch.testing.assert_close(run(model, entry), entry["output"], atol=1e-5, rtol=0)
    load_weights(model, load_foreign_state_dict(path, key="net_model"), source=str(path))
    assert torch.equal(model.time_embed[0].weight, raw["time_embed.0.weight"])


def test_checkpoint_of_another_configuration_is_refused_in_one_line(fixture, tmp_path):
    entry = fixture["configs"]["plain"]
    wider = ADMUNet(**{**entry["kwargs"], "num_channels": 64}).state_dict()
    path = torchcfm_file(tmp_path / "wider.pt", wider, wider)
    model = ADMUNet(**entry["kwargs"])
    with pytest.raises(UserError) as err:
        load_weights(model, load_foreign_state_dict(path), source=str(path))
    message = str(err.value)
    assert "\n" not in message
    assert "shape mismatch: time_embed.0.weight (256, 64) vs model (128, 32)" in message
    assert "missing" not in message and "unexpected" not in message


def test_class_conditional_checkpoint_into_unconditional_model_names_the_label_embedding(fixture):
    entry = fixture["configs"]["class_cond"]
    model = ADMUNet(**{**entry["kwargs"], "class_cond": False})
    with pytest.raises(UserError, match=r"unexpected: label_emb\.weight$"):
        load_weights(model, float_state(entry), source="torchcfm")


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"dim": (3, 32, 32), "attention_resolutions": "12"},
         r"attention resolution 12 is not the width of a feature map of this network: its maps are 32, 16 pixels"),
        ({"attention_resolutions": "16,x"}, r"comma-separated integers"),
        ({"num_heads": 3}, r"num_heads=3 does not divide the 64 channels of the attention at 8x8$"),
        ({"num_heads_upsample": 3}, r"num_heads=3 does not divide the 64 channels of the attention at 8x8 \(decoder\)"),
        ({"num_head_channels": 24}, r"num_head_channels=24 does not divide the 64 channels"),
        ({"dim": (3, 28, 28), "channel_mult": [1, 2, 2, 2], "attention_resolutions": "14"},
         r"channel_mult=\[1, 2, 2, 2\] has 4 levels, so the image height and width must be divisible by 2\*\*3 = 8; "
         r"got 28x28"),
        ({"channel_mult": None}, r"no default channel_mult for images 16 pixels wide .*pass channel_mult"),
        ({"channel_mult": []}, r"channel_mult must be a non-empty list of positive numbers"),
        ({"num_channels": 48}, r"widths int\(channel_mult \* num_channels\) = \[48, 96\] must all be positive "
                               r"multiples of 32"),
        ({"num_res_blocks": 0}, r"num_res_blocks must be a positive integer, got 0"),
        ({"dim": (3, 16)}, r"dim must be an image shape \(C, H, W\)"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"use_fp16": True}, r"does not support use_fp16=True"),
        ({"class_cond": True, "num_classes": 0}, r"num_classes must be a positive integer, got 0"),
    ],
)
def test_bad_constructor_values_are_one_clear_error(fixture, changes, pattern):
    kwargs = {**fixture["configs"]["plain"]["kwargs"], **changes}
    with pytest.raises(ValueError, match=pattern) as err:
        ADMUNet(**kwargs)
    assert "\n" not in str(err.value)


def test_registry_builds_and_rebuilds_adm_unet(fixture, tmp_path):
    entry = fixture["configs"]["class_cond"]
    options = {k: v for k, v in entry["kwargs"].items() if k != "dim"}
    spec = ModelSpec("adm-unet", tuple(entry["kwargs"]["dim"]), options)
    model = build_model(spec)
    assert isinstance(model, ADMUNet) and model.num_classes == 5
    model.load_state_dict(float_state(entry), strict=True)
    ckpt = save_checkpoint(tmp_path / "ckpt", model=model, spec=spec, kind="pretrain", step=0, config={})
    rebuilt = load_checkpoint(ckpt).build_model("raw")
    torch.testing.assert_close(run(rebuilt, entry), entry["output"], atol=1e-5, rtol=0)


def test_registry_default_and_errors():
    spec = default_spec("adm-unet", (3, 32, 32))
    assert spec.options["num_channels"] == 128 and spec.options["attention_resolutions"] == "16"
    assert spec.options["channel_mult"] == [1, 2, 2, 2]
    assert default_spec("adm-unet", (1, 28, 28)).options["attention_resolutions"] == "14"
    small = ModelSpec("adm-unet", (1, 28, 28), {**default_spec("adm-unet", (1, 28, 28)).options, "num_channels": 32,
                                                "num_res_blocks": 1, "num_head_channels": 32})
    assert build_model(small).channel_mult == (1, 2, 2)
    with pytest.raises(UserError, match=r"model 'adm-unet' needs an image event shape \(C, H, W\), got \(2,\)"):
        build_model(ModelSpec("adm-unet", (2,)))
    with pytest.raises(UserError, match=r"'dim' of 'adm-unet' is set by event_shape"):
        build_model(ModelSpec("adm-unet", (3, 16, 16), {"dim": [3, 16, 16]}))
    with pytest.raises(UserError, match=r"cannot build model 'adm-unet'.*attention resolution 12"):
        build_model(ModelSpec("adm-unet", (3, 32, 32), {"num_channels": 32, "num_res_blocks": 1,
                                                         "attention_resolutions": "12"}))


def test_call_conventions(fixture):
    plain = loaded(fixture["configs"]["plain"])
    x = fixture["configs"]["plain"]["x"]
    with torch.no_grad():
        assert torch.equal(plain(torch.tensor(0.3), x), plain(torch.full((3,), 0.3), x))
        assert torch.equal(plain(0.3, x), plain(torch.full((3,), 0.3), x))
    assert plain.num_classes is None  # unconditional, although num_classes defaults to 1000 as in torchcfm
    with pytest.raises(ValueError, match=r"t must have shape \(\) or \(3,\)"):
        plain(torch.rand(3, 1), x)
    with pytest.raises(ValueError, match=r"expects x of shape \(B, 3, 16, 16\), got \(3, 3, 8, 8\)"):
        plain(torch.rand(3), torch.randn(3, 3, 8, 8))
    with pytest.raises(ValueError, match="unconditional"):
        plain(torch.rand(3), x, torch.zeros(3, dtype=torch.long))

    entry = fixture["configs"]["class_cond"]
    cond = loaded(entry)
    with torch.no_grad():
        out = cond(entry["t"], entry["x"], Labels(entry["y"], 5))
    torch.testing.assert_close(out, entry["output"], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no null row"):
        cond(entry["t"], entry["x"])
    with pytest.raises(ValueError, match="no null label"):
        cond(entry["t"], entry["x"], Labels(entry["y"], 5).null())
    with pytest.raises(ValueError, match="built for 5 classes got labels of 10 classes"):
        cond(entry["t"], entry["x"], Labels(entry["y"], 10))
    with pytest.raises(ValueError, match=r"integer tensor of shape \(3,\), got torch.float32 \(3,\)"):
        cond(entry["t"], entry["x"], entry["y"].float())


def test_gradient_checkpointing_changes_nothing(fixture):
    entry = fixture["configs"]["scale_shift_updown"]
    kwargs = {**entry["kwargs"], "dropout": 0.0}
    grads = []
    for use_checkpoint in (False, True):
        model = ADMUNet(**{**kwargs, "use_checkpoint": use_checkpoint})
        model.load_state_dict(float_state(entry))
        out = model(entry["t"], entry["x"])
        out.square().mean().backward()
        grads.append((out.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=0, rtol=0)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


def test_untrained_output_is_zero():
    model = ADMUNet((1, 28, 28), num_channels=32, num_res_blocks=1, attention_resolutions="7")
    assert torch.equal(model(torch.rand(2), torch.randn(2, 1, 28, 28)), torch.zeros(2, 1, 28, 28))
