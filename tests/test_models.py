"""Tests for orwcfm.models: shapes, time handling, the zero-initialised head, batch independence,
spec round trips and errors, and a digits classifier that actually classifies."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from orwcfm.errors import UserError
from orwcfm.models import (
    MLP,
    DigitsClassifier,
    ModelSpec,
    UNet,
    XTAdapter,
    accuracy,
    available_models,
    broadcast_time,
    build_model,
    default_spec,
    num_parameters,
    predict_proba,
    time_embedding,
    train_classifier,
)
from orwcfm.models.classifier import BACKGROUND, random_shift

# (factory, event_shape): small widths keep the suite fast; the shapes are the ones the toolkit uses.
MODELS = {
    "mlp-2": (lambda: MLP(2, hidden=32, depth=2), (2,)),
    "mlp-5-relu-dropout": (lambda: MLP(5, hidden=16, depth=1, activation="relu", dropout=0.2), (5,)),
    "unet-1x8x8": (lambda: UNet(1, 8), (1, 8, 8)),
    "unet-3x32x32": (lambda: UNet(3, 32, base_channels=8, channel_mult=(1, 2, 2), attention_resolutions=(8,)), (3, 32, 32)),
    "unet-1x28x28": (lambda: UNet(1, 28, base_channels=8, attention_resolutions=()), (1, 28, 28)),
    "unet-2heads-dropout": (lambda: UNet(2, 8, base_channels=8, num_heads=2, dropout=0.3, num_groups=4), (2, 8, 8)),
}


def perturbed(model: nn.Module, scale: float = 0.1, seed: int = 0) -> nn.Module:
    """Move every parameter away from its initial value (the UNet head starts at exactly zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def make(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    factory, shape = MODELS[name]
    return factory(), shape


@pytest.mark.parametrize("name", MODELS)
def test_output_shape_matches_input(name):
    model, shape = make(name)
    x = torch.randn(3, *shape)
    assert model(torch.rand(3), x).shape == x.shape


def test_unet_out_channels():
    assert UNet(3, 8, base_channels=8, out_channels=1)(torch.rand(2), torch.randn(2, 3, 8, 8)).shape == (2, 1, 8, 8)


def test_unet_is_zero_at_init_and_not_after_one_step():
    torch.manual_seed(0)
    model = UNet(1, 8)
    x, t = torch.randn(16, 1, 8, 8), torch.rand(16)
    assert torch.equal(model(t, x), torch.zeros_like(x))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = (model(t, x) - x).pow(2).mean()
    loss.backward()
    opt.step()
    assert model(t, x).abs().max() > 0


@pytest.mark.parametrize("name", MODELS)
def test_output_depends_on_t(name):
    model, shape = make(name)
    model = perturbed(model).eval()
    x = torch.randn(4, *shape)
    out_a, out_b = model(torch.full((4,), 0.1), x), model(torch.full((4,), 0.2), x)
    assert (out_a - out_b).abs().max() > 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_scalar_t_equals_expanded_t(name):
    model, shape = make(name)
    model = perturbed(model).eval()
    x, t = torch.randn(5, *shape), torch.tensor(0.37)
    assert torch.equal(model(t, x), model(t.expand(5), x))


@pytest.mark.parametrize("name", ["mlp-2", "unet-1x8x8"])
@pytest.mark.parametrize("bad_shape", [(4, 1), (5,)])
def test_bad_t_shape_raises_naming_the_shape(name, bad_shape):
    model, shape = make(name)
    with pytest.raises(ValueError, match=rf"got shape {tuple(bad_shape)}".replace("(", r"\(").replace(")", r"\)")):
        model(torch.rand(bad_shape), torch.randn(4, *shape))


def test_broadcast_time():
    assert torch.equal(broadcast_time(0.5, 3), torch.full((3,), 0.5))
    assert broadcast_time(torch.tensor([1, 0]), 2).dtype == torch.float32  # integer times become float
    t = torch.rand(4)
    assert broadcast_time(t, 4) is t


def test_xt_adapter_swaps_arguments_exactly():
    class XFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x, t):
            return self.lin(x) * torch.cos(t)[:, None] + t[:, None]

    f = XFirst()
    adapter = XTAdapter(f)
    x, t = torch.randn(6, 3), torch.rand(6)
    assert torch.equal(adapter(t, x), f(x, t))
    assert set(adapter.state_dict()) == {f"module.{k}" for k in f.state_dict()}


def test_time_embedding_deterministic_and_distinguishing():
    t = torch.tensor([0.1, 0.2, 0.1])
    emb = time_embedding(t, 64)
    assert emb.shape == (3, 64)
    assert torch.equal(emb, time_embedding(t, 64))
    assert torch.equal(emb[0], emb[2])
    assert (emb[0] - emb[1]).norm() > 1.0
    assert time_embedding(t, 7).shape == (3, 7)  # odd dims are padded, not rejected
    with pytest.raises(ValueError, match=r"\(3, 1\)"):
        time_embedding(t[:, None], 8)


@pytest.mark.parametrize(
    "spec",
    [
        default_spec("auto", (2,)),
        default_spec("auto", (1, 8, 8)),
        ModelSpec("mlp", (3,), {"hidden": 16, "depth": 2, "activation": "gelu"}),
        ModelSpec("unet", (3, 16, 16), {"base_channels": 8, "channel_mult": (1, 2, 2), "attention_resolutions": (4,)}),
    ],
)
def test_spec_json_round_trip_rebuilds_the_same_model(spec):
    torch.manual_seed(0)
    original = perturbed(build_model(spec)).eval()
    restored_spec = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert restored_spec == spec
    torch.manual_seed(1)  # a different initialisation, overwritten by the loaded weights
    rebuilt = build_model(restored_spec).eval()
    rebuilt.load_state_dict(original.state_dict())
    x, t = torch.randn(4, *spec.event_shape), torch.rand(4)
    assert torch.equal(rebuilt(t, x), original(t, x))


def test_default_spec_chooses_by_shape():
    assert available_models() == ["adm-unet", "mlp", "unet"]
    assert default_spec("auto", (2,)).kind == "mlp"
    digits = default_spec("auto", (1, 8, 8))
    assert digits.kind == "unet" and digits.options["channel_mult"] == [1, 2]
    assert default_spec("auto", [3, 32, 32]).options["channel_mult"] == [1, 2, 2]
    assert default_spec("unet", (1, 28, 28)).options["attention_resolutions"] == [7]
    for shape in [(1, 8, 8), (3, 32, 32), (1, 28, 28), (2,)]:
        build_model(default_spec("auto", shape))  # every default builds
    with pytest.raises(UserError, match=r"\(4, 4\)"):
        default_spec("auto", (4, 4))


@pytest.mark.parametrize(
    "spec, pattern",
    [
        (ModelSpec("unte", (1, 8, 8)), r"unknown model 'unte' \(did you mean 'unet'\?\); available: adm-unet, mlp, unet"),
        (ModelSpec("mlp", (2,), {"hiden": 8}), r"unknown option 'hiden' for model 'mlp' \(did you mean 'hidden'\?\); accepted: hidden"),
        (ModelSpec("unet", (2,)), r"model 'unet' needs a square image event shape \(C, H, H\), got \(2,\)"),
        (ModelSpec("mlp", (1, 8, 8)), r"model 'mlp' needs a 1-D event shape"),
        (ModelSpec("mlp", (2,), {"dim": 3}), r"'dim' of 'mlp' is set by event_shape"),
        (ModelSpec("unet", (1, 28, 28), {"channel_mult": [1, 2, 2, 2]}), r"image_size=28 .*channel_mult=\[1, 2, 2, 2\]"),
        (ModelSpec("mlp", (2,), {"activation": "relux"}), r"unknown activation 'relux' \(did you mean 'relu'\?\)"),
    ],
)
def test_bad_specs_raise_user_errors(spec, pattern):
    with pytest.raises(UserError, match=pattern):
        build_model(spec)


def test_spec_from_dict_rejects_unknown_and_missing_keys():
    with pytest.raises(UserError, match=r"unknown model spec key 'option' \(did you mean 'options'\?\)"):
        ModelSpec.from_dict({"kind": "mlp", "event_shape": [2], "option": {}})
    with pytest.raises(UserError, match="missing 'event_shape'"):
        ModelSpec.from_dict({"kind": "mlp"})


def test_unet_rejects_indivisible_image_size_and_bad_groups():
    with pytest.raises(ValueError, match=r"image_size=28.*channel_mult=\[1, 2, 2, 2\]"):
        UNet(1, 28, channel_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match=r"num_groups=8 must divide"):
        UNet(1, 8, base_channels=12)


@pytest.mark.parametrize("name", MODELS)
def test_batch_independence_in_eval_mode(name):
    # GroupNorm normalises per sample, so row i must not see the other rows (unlike BatchNorm).
    model, shape = make(name)
    model = perturbed(model).eval()
    x, t = torch.randn(6, *shape), torch.rand(6)
    out = model(t, x)
    x2, t2 = x.clone(), t.clone()
    x2[1:] = torch.randn(5, *shape)
    t2[1:] = torch.rand(5)
    # Different batch sizes may pick different kernels: allow float32 round-off, nothing more.
    tol = {"rtol": 1e-4, "atol": 1e-5 * (1 + out.abs().max().item())}
    torch.testing.assert_close(model(t2, x2)[0], out[0], **tol)
    torch.testing.assert_close(model(t[:1], x[:1])[0], out[0], **tol)


def test_unet_gradient_reaches_first_layer():
    torch.manual_seed(0)
    model = UNet(1, 8)
    x, t = torch.randn(8, 1, 8, 8), torch.rand(8)
    model(t, x).pow(2).sum().backward()
    # Zero-initialised head: nothing below it gets a gradient at init (documented), the head itself does.
    assert model.stem.weight.grad.abs().max() == 0
    model.zero_grad()
    perturbed(model)
    (model(t, x) - x).pow(2).mean().backward()
    assert model.stem.weight.grad.abs().max() > 0
    assert model.time_mlp[0].weight.grad.abs().max() > 0


def test_num_parameters():
    assert num_parameters(nn.Linear(4, 3)) == 15
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1))
    model[0].requires_grad_(False)
    assert num_parameters(model) == 19 and num_parameters(model, trainable_only=True) == 4
    assert 100_000 <= num_parameters(UNet(1, 8)) <= 500_000


def test_random_shift_moves_by_at_most_one_pixel_with_background_fill():
    x = torch.rand(32, 1, 5, 5)
    y = random_shift(x, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=BACKGROUND)
    shifts = torch.stack([padded[:, :, dy : dy + 5, dx : dx + 5] for dy in range(3) for dx in range(3)])
    matches = (shifts == y).flatten(2).all(dim=2)  # (9 shifts, 32 images)
    assert matches.any(dim=0).all()
    assert matches.sum(dim=1).gt(0).sum() > 1  # several different shifts were drawn


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images / 8 - 1, dtype=torch.float32)[:, None]
    return x, torch.tensor(digits.target, dtype=torch.int64)


def test_digits_classifier_generalises():
    torch.manual_seed(0)
    x, y = _digits()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[: int(0.8 * len(x))], perm[int(0.8 * len(x)) :]
    model = DigitsClassifier()
    result = train_classifier(model, x[train], y[train], epochs=30, seed=0)
    assert not model.training
    assert result.train_accuracy >= 0.95 and result.final_loss < 0.5
    assert accuracy(model, x[test], y[test]) >= 0.95
    features = model.features(x[test])
    assert features.shape == (len(test), 4 * 32)
    proba = predict_proba(model.train(), x[test], batch_size=100)
    assert model.training  # the caller's mode is restored
    assert proba.shape == (len(test), 10)
    torch.testing.assert_close(proba.sum(dim=1), torch.ones(len(test)))


def test_classifier_rejects_wrong_image_shape():
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\), got \(2, 1, 7, 7\)"):
        DigitsClassifier()(torch.zeros(2, 1, 7, 7))


def test_unet_rejects_attention_at_absent_resolution():
    with pytest.raises(ValueError, match=r"attention_resolutions=\[5\] .* among \[8, 4\]"):
        UNet(1, 8, attention_resolutions=(5,))


def test_single_level_unet_for_odd_image_size():
    spec = default_spec("auto", (1, 7, 7))
    assert spec.options["channel_mult"] == [1]
    model = perturbed(build_model(spec))
    assert model(torch.rand(2), torch.randn(2, 1, 7, 7)).shape == (2, 1, 7, 7)
