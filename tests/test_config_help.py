"""Every config key has a help sentence, and ``orwcfm pretrain|finetune --help`` lists every key with it."""

import dataclasses
from pathlib import Path

import pytest

from orwcfm.cli import main
from orwcfm.config import DataConfig, FinetuneConfig, ModelConfig, PretrainConfig, SamplingConfig, config_keys, help_of

CONFIG_PACKAGE = Path(__file__).resolve().parents[1] / "orwcfm" / "config"


@pytest.mark.parametrize("cls", [PretrainConfig, FinetuneConfig, DataConfig, ModelConfig, SamplingConfig])
def test_every_field_has_one_help_sentence(cls):
    for field in dataclasses.fields(cls):
        text = help_of(field)
        assert text.strip(), f"{cls.__name__}.{field.name} has no help"
        assert text.endswith(".") and "\n" not in text, f"{cls.__name__}.{field.name}: {text!r}"


def test_nested_keys_are_dotted_with_the_fields_own_defaults():
    rows = {r.key: r for r in config_keys(FinetuneConfig)}
    assert rows["sampling"].section and rows["sampling.solver"].default == "midpoint"
    assert rows["eval_sampling.steps"].default == 10
    assert rows["event_shape"].type == "list of int | null" and rows["event_shape"].default is None
    assert {"data.name", "data.root", "model.options", "sampling.precision"} <= {r.key for r in config_keys(PretrainConfig)}


def _help_output(command, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command, cls", [("finetune", FinetuneConfig), ("pretrain", PretrainConfig)])
def test_help_lists_every_key_with_type_default_and_help(command, cls, capsys):
    out = _help_output(command, capsys)
    flat = " ".join(out.split())  # the epilog wraps help sentences over lines
    for row in config_keys(cls):
        assert f"\n  {row.key}: {row.type}" in out, row.key
        assert " ".join(row.help.split()) in flat, row.key


def test_finetune_help_explains_w2_coefficient(capsys):
    out = _help_output("finetune", capsys)
    flat = " ".join(out.split())
    assert "  w2_coefficient: float = 1.0\n" in out
    assert "alpha, strength of the W2 regulariser" in flat and "0 is plain ORW-CFM" in flat
    assert "event_shape: list of int | null = null" in out
    assert "sampling.solver: 'euler' | 'midpoint' | 'heun' | 'rk4' | 'dopri5' = 'midpoint'" in out


def test_config_package_modules_stay_small():
    for path in sorted(CONFIG_PACKAGE.glob("*.py")):
        assert len(path.read_text().splitlines()) <= 400, path.name
