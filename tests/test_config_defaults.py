"""The config defaults and presets are pinned: the config package split and the added help texts changed none.

``config_defaults.json`` was written from ``to_dict`` of the former single module ``orwcfm/config.py`` (commit
b3c0253) before any of it was edited: the default PretrainConfig and FinetuneConfig, every pretraining preset,
every fine-tuning task and every built-in reference. It is compared with today's code, never recomputed by it.
Keys added since then (NEW_KEYS) must default to what the code did before they existed.
"""

import json
from pathlib import Path

import pytest
import yaml

from orwcfm.assets import reference_config
from orwcfm.config.t2i import TextToImageConfig
from orwcfm.config import (
    BUILTIN_REFERENCES,
    FINETUNE_PRESETS,
    PRETRAIN_PRESETS,
    FinetuneConfig,
    PretrainConfig,
    SamplingConfig,
    fill_defaults,
    finetune_config,
    from_dict,
    pretrain_config,
    to_dict,
)
from orwcfm.errors import UserError
from orwcfm.sweep import _status, parse_grid, plan_sweep

PINNED = json.loads((Path(__file__).parent / "config_defaults.json").read_text())
# Fine-tuning keys added after the pinned commit, with the default that keeps the old behaviour.
NEW_KEYS = {"event_shape": None, "refresh": "online", "algorithm": "orw-cfm-w2", "weight_groups": "batch", "prompts": None,
            "samples_per_prompt": 1, "judge": "auto"}
# fine-tuning only (pretraining's 'model' is its network's section)
NEW_FINETUNE_KEYS = {"algorithm_options": {}, "model": None, "eval_prompts": None, "prompt_dropout": 0.0,
                     "t2i": to_dict(TextToImageConfig()), "eval_every": 1, "ref_model": None}
NEW_SAMPLING_KEYS = {"guidance": 1.0}  # in every sampler section


def _without_new_keys(settings: dict, finetune: bool = False) -> dict:
    new = {**NEW_KEYS, **NEW_FINETUNE_KEYS} if finetune else NEW_KEYS
    assert {k: settings[k] for k in new if k in settings} == {k: v for k, v in new.items() if k in settings}
    out = {k: v for k, v in settings.items() if k not in new}
    for section in ("sampling", "eval_sampling"):
        if section in out:
            assert {k: out[section][k] for k in NEW_SAMPLING_KEYS} == NEW_SAMPLING_KEYS
            out[section] = {k: v for k, v in out[section].items() if k not in NEW_SAMPLING_KEYS}
    return out


def test_default_pretrain_config_is_pinned():
    assert _without_new_keys(to_dict(PretrainConfig())) == PINNED["PretrainConfig"]
    # a few values spelled out, so that a wrong fixture cannot hide a change
    cfg = PretrainConfig()
    assert (cfg.steps, cfg.learning_rate, cfg.ema_decay, cfg.sampling) == (5000, 2e-3, 0.999, SamplingConfig("euler", 100))


# Defaults changed on purpose since the pinned commit: (pinned value, today's value). buffer_size: fast by default
# (samples reused between refreshes); eval_samples: evaluations sized to a small share of the run.
CHANGED_FINETUNE_DEFAULTS = {"buffer_size": (None, "auto"), "eval_samples": (500, "auto")}
# keys added after the pin whose default then changed on purpose: (their first default, today's)
CHANGED_NEW_DEFAULTS = {"eval_every": (1, "auto")}


def test_default_finetune_config_is_pinned():
    settings = to_dict(FinetuneConfig())
    for key, (first, new) in CHANGED_NEW_DEFAULTS.items():
        assert settings[key] == new, key
        settings[key] = first
    today = _without_new_keys(settings, finetune=True)
    pinned = dict(PINNED["FinetuneConfig"])
    for key, (old, new) in CHANGED_FINETUNE_DEFAULTS.items():
        assert (pinned.pop(key), today.pop(key)) == (old, new), key
    assert today == pinned
    cfg = FinetuneConfig()
    assert (cfg.w2_coefficient, cfg.temperature, cfg.learning_rate, cfg.weighting) == (1.0, 0.5, 2e-4, "paper")
    assert cfg.sampling == cfg.eval_sampling == SamplingConfig(solver="midpoint", steps=10)


def test_every_preset_and_reference_is_pinned():
    assert sorted(PRETRAIN_PRESETS) == sorted(PINNED["pretrain_presets"])
    assert sorted(FINETUNE_PRESETS) == sorted([*PINNED["finetune_presets"], "digits-align", "mnist5k-align", "sd3-clip",
                                                   "sd3-tiny", "flux-clip", "cifar10-clip"])  # added since
    assert sorted(BUILTIN_REFERENCES) == sorted([*PINNED["builtin_references"], "mnist5k-cond"])  # added since
    for name, pinned in PINNED["pretrain_presets"].items():
        assert _without_new_keys(to_dict(pretrain_config(name))) == pinned, name
    for name, pinned in PINNED["finetune_presets"].items():
        assert _without_new_keys(to_dict(finetune_config(config_file=name)), finetune=True) == pinned, name
    for name, pinned in PINNED["builtin_references"].items():
        assert _without_new_keys(to_dict(reference_config(name))) == pinned, name


# ---------------------------------------------------------------------------------------------------------------
# event_shape: the sample shape for models without shape attributes.


def test_event_shape_from_yaml_list_and_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("event_shape: [1, 8, 8]\n")
    assert finetune_config(config_file=f).event_shape == (1, 8, 8)
    assert finetune_config(overrides=["event_shape=[2]"]).event_shape == (2,)
    assert finetune_config(overrides=["event_shape=null"]).event_shape is None
    cfg = finetune_config(overrides=["event_shape=[3, 32, 32]"])
    assert from_dict(FinetuneConfig, yaml.safe_load(yaml.safe_dump(to_dict(cfg)))) == cfg  # config.yaml round trip


@pytest.mark.parametrize("value, message", [
    ("[]", "config key 'event_shape' must be a non-empty list of positive integers, e.g. [1, 8, 8], got []"),
    ("[1, 0, 8]", "config key 'event_shape' must be a non-empty list of positive integers, e.g. [1, 8, 8], got [1, 0, 8]"),
    ("[1, -8]", "got [1, -8]"),
    ("[1, 2.5]", "config key 'event_shape': expected list of int | null, got [1, 2.5]"),
    ("8", "config key 'event_shape': expected list of int | null, got 8"),
    ("[true]", "config key 'event_shape': expected list of int | null, got [True]"),
])
def test_bad_event_shape_is_one_line_naming_the_value(value, message):
    with pytest.raises(UserError) as err:
        finetune_config(overrides=[f"event_shape={value}"])
    assert message in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# A config saved before event_shape existed.


def _saved_before_event_shape(cfg: FinetuneConfig) -> dict:
    saved = to_dict(cfg)
    del saved["event_shape"]  # what config.yaml / meta.json held before the key was added
    return saved


def test_fill_defaults_completes_a_config_saved_without_a_key():
    cfg = finetune_config(config_file="toy-2d", overrides=["sampling.steps=4"])
    saved = _saved_before_event_shape(cfg)
    assert saved != to_dict(cfg)
    assert fill_defaults(FinetuneConfig, saved) == to_dict(cfg)
    assert from_dict(FinetuneConfig, saved) == cfg
    # a nested section saved partially is filled from the field's own default (midpoint), not SamplingConfig's
    partial = {**saved, "sampling": {"steps": 4}}
    assert fill_defaults(FinetuneConfig, partial)["sampling"] == to_dict(cfg.sampling)
    # a key today's code does not know stays, so that it still shows as a difference
    assert fill_defaults(FinetuneConfig, {**saved, "old_key": 1})["old_key"] == 1


def test_a_sweep_folder_saved_without_event_shape_still_resumes(tmp_path):
    (cell,) = plan_sweep("toy-2d", parse_grid(["w2_coefficient=0.5"]), tmp_path)
    cell.run_dir.mkdir(parents=True)
    (cell.run_dir / "config.yaml").write_text(yaml.safe_dump(_saved_before_event_shape(cell.config), sort_keys=False))
    assert _status(cell) == "new"  # not refused as "run with other settings"
    (cell.run_dir / "summary.json").write_text("{}")
    assert _status(cell) == "finished"
    other = {**_saved_before_event_shape(cell.config), "temperature": 9.0}
    (cell.run_dir / "config.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    with pytest.raises(UserError, match=r"was run with other settings \(temperature differ\)"):
        _status(cell)


def test_the_digits_align_preset_is_the_documented_setting():
    cfg = finetune_config(config_file="digits-align")
    assert cfg.ref_path == "builtin:digits-cond" and cfg.reward == "digits-align"
    assert cfg.prompts == tuple(f"a handwritten {d}" for d in range(10))
    assert (cfg.samples_per_prompt, cfg.w2_coefficient, cfg.temperature, cfg.coupling) == (8, 0.1, 2.0, "ot")
    assert (cfg.batch_size, cfg.buffer_size, cfg.epochs, cfg.steps_per_epoch) == (128, 1024, 8, 50)


def test_the_mnist5k_align_preset_is_digits_align_on_the_28x28_digits():
    cfg, small = finetune_config(config_file="mnist5k-align"), finetune_config(config_file="digits-align")
    assert cfg.ref_path == "builtin:mnist5k-cond" and cfg.reward == "digits-align"
    assert cfg.reward_options == {"dataset": "mnist5k"} and cfg.prompts == small.prompts
    assert (cfg.samples_per_prompt, cfg.w2_coefficient, cfg.temperature, cfg.coupling) == (8, 0.1, 2.0, "ot")
    assert (cfg.batch_size, cfg.buffer_size, cfg.epochs, cfg.steps_per_epoch) == (64, 512, 8, 100)
    conditional = reference_config("mnist5k-cond")
    assert conditional.conditional and conditional.condition_dropout == 0.1 and conditional.data.name == "mnist5k"
    assert conditional.model == reference_config("mnist5k").model and conditional.steps == 5000
