"""Config resolution and validation: every mistake is one clear line naming the key."""

from pathlib import Path

import pytest

from orwcfm.assets import _digest, reference_config, reference_key
from orwcfm.config import (
    FINETUNE_PRESETS,
    PRESETS_DIR,
    finetune_config,
    PRETRAIN_PRESETS,
    PretrainConfig,
    SamplingConfig,
    from_dict,
    parse_overrides,
    pretrain_config,
    to_dict,
)
from orwcfm.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pretrain"


def test_layers_apply_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 10\nlearning_rate: 1e-3\nmodel: {options: {base_channels: 16}}\n")
    cfg = pretrain_config("digits", f, ["steps=20", "model.options.channel_mult=[1, 2]"], batch_size=32)
    assert cfg.steps == 20  # --set beats the file
    assert cfg.learning_rate == 1e-3  # YAML 1.1 reads 1e-3 as a string; it must still become a float
    assert cfg.batch_size == 32
    assert cfg.model.options == {"base_channels": 16, "channel_mult": [1, 2]}
    assert cfg.data.name == "digits"


# The digests name the cached built-in references (~/.cache/orwcfm/NAME-reference-DIGEST): a change of a preset's
# resolved settings renames the folder and retrains the reference for every user. Recorded when the presets moved into
# YAML files (orwcfm/presets); change a value here only together with a deliberate change of that preset.
CACHED_REFERENCE_DIGESTS = {
    "digits": "6e19370a99", "patches": "0e7e39d3f4", "mnist5k": "452b3f5803", "gaussian-1d": "b09dd01f26",
    "8gaussians": "4e024f8b3b", "moons": "1f4c163c1d", "digits-cond": "f3105d4fdc", "mnist5k-cond": "0ec755dd66",
}


@pytest.mark.parametrize("name", sorted(CACHED_REFERENCE_DIGESTS))
def test_builtin_references_keep_their_cache_folder(name):
    assert _digest(reference_key(reference_config(name))) == CACHED_REFERENCE_DIGESTS[name]


def test_presets_live_once_in_the_package_and_configs_is_a_view_of_them():
    assert sorted(FINETUNE_PRESETS) == ["cifar10-clip", "digits-align", "digits-even", "flux-clip", "mnist5k-align",
                                        "mnist5k-even", "patches-jpeg", "sd3-clip", "sd3-tiny", "toy-2d"]
    assert {"digits", "mnist5k", "patches", "8gaussians"} <= set(PRETRAIN_PRESETS)
    for kind, presets in (("pretrain", PRETRAIN_PRESETS), ("finetune", FINETUNE_PRESETS)):
        for name in presets:
            assert (PRESETS_DIR / kind / f"{name}.yaml").is_file()
            assert (CONFIGS.parent / kind / f"{name}.yaml").resolve() == (PRESETS_DIR / kind / f"{name}.yaml").resolve()
    # a preset given by name and the same file given by path resolve alike
    assert finetune_config(config_file=CONFIGS.parent / "finetune" / "toy-2d.yaml") == finetune_config(config_file="toy-2d")
    assert pretrain_config(config_file=CONFIGS / "digits.yaml") == pretrain_config("digits")


def test_round_trip_through_dict():
    cfg = pretrain_config("patches")
    assert from_dict(PretrainConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("learning_rte=0.1", "unknown config key 'learning_rte' (did you mean 'learning_rate'?)"),
        ("sampling.solvr=rk4", "unknown config key 'sampling.solvr' (did you mean 'sampling.solver'?)"),
        ("steps=0", "config key 'steps' must be > 0, got 0"),
        ("steps=-5", "config key 'steps' must be > 0, got -5"),
        ("learning_rate=0", "config key 'learning_rate' must be > 0, got 0.0"),
        ("batch_size=2.5", "config key 'batch_size': expected an integer, got 2.5"),
        ("coupling=ott", "'ott' is not accepted (did you mean 'ot'?); accepted values: independent, ot"),
        ("sampling.solver=rk5", "accepted values: euler, midpoint, heun, rk4, dopri5"),
        ("ema_decay=1.5", "config key 'ema_decay' must be in (0, 1) or null, got 1.5"),
        ("grad_clip=-1", "config key 'grad_clip' must be > 0, got -1.0"),
        ("learning_rate=fast", "config key 'learning_rate': expected a number, got 'fast'"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(UserError) as err:
        pretrain_config("digits", overrides=[override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(UserError, match=r"bad.yaml is not valid YAML at line 2"):
        pretrain_config(config_file=bad)
    with pytest.raises(UserError, match="config file not found"):
        pretrain_config(config_file=tmp_path / "missing.yaml")
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        pretrain_config(config_file=lst)


def test_parse_overrides():
    assert parse_overrides(["a.b.c=1", "a.d=[1, 2]", "e=null", "f=true", "g=2e-4"]) == {
        "a": {"b": {"c": 1}, "d": [1, 2]}, "e": None, "f": True, "g": 2e-4}
    with pytest.raises(UserError, match="--set expects key=value, got 'steps'"):
        parse_overrides(["steps"])


def test_from_dict_nested():
    assert from_dict(SamplingConfig, {"solver": "heun"}) == SamplingConfig(solver="heun", steps=100)


def test_readme_dict_keys_are_accepted_as_written():
    readme = {"learning_rate": 2e-4, "warmup_steps": 5000, "w2_coefficient": 1.0, "temperature": 0.5, "grad_clip": 1.0,
              "batch_size": 128, "text_prompts": ["An image of dog", "Not an image of dog"], "use_wandb": True,
              "wandb_project": "flow-matching", "run_name": "orw-cfm-w2", "savedir": "./results",
              "ref_path": "./pretrained/model.pt"}
    cfg = finetune_config(readme)
    assert (cfg.w2_coefficient, cfg.temperature, cfg.text_prompts) == (1.0, 0.5, ("An image of dog", "Not an image of dog"))
    assert finetune_config(cfg) == cfg  # the dataclass is accepted too


@pytest.mark.parametrize(
    "override, message",
    [
        ("w2_coeficient=1", "did you mean 'w2_coefficient'?"),
        ("w2_coefficient=-1", "config key 'w2_coefficient' must be >= 0, got -1.0"),
        ("temperature=-0.5", "config key 'temperature' must be >= 0, got -0.5"),
        ("batch_size=0", "config key 'batch_size' must be > 0, got 0"),
        ("buffer_size=16", "config key 'buffer_size' (16) must be at least batch_size (128)"),
        ("on_bad_reward=skip", "accepted values: stop, drop"),
        ("text_prompts=[dog]", "needs at least two prompts"),
    ],
)
def test_bad_finetune_values(override, message):
    with pytest.raises(UserError) as err:
        finetune_config(overrides=[override])
    assert message in str(err.value)


def test_partial_nested_override_keeps_the_fields_own_default():
    # FinetuneConfig samples with midpoint x 10 (not SamplingConfig's euler x 100): changing only the steps
    # must keep midpoint.
    from orwcfm.config import finetune_config

    assert finetune_config(overrides=["sampling.steps=4"]).sampling == SamplingConfig(solver="midpoint", steps=4)
    assert finetune_config({"sampling": {"solver": "rk4"}}).sampling == SamplingConfig(solver="rk4", steps=10)
