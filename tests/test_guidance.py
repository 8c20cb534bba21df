"""Conditional fields, classifier-free guidance and conditional sampling."""

import pytest
import torch
from torch import nn

from orwcfm.conditions import Labels
from orwcfm.errors import UserError
from orwcfm.guidance import ClassifierFreeGuidance
from orwcfm.models.unet import UNet
from orwcfm.sampling import integrate, sample


class ShiftField(nn.Module):
    """v(t, x, c) = -x + mu_c with mu_c = (c + 1) (the null condition: mu = 0); counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, t, x, cond=None):
        self.calls += 1
        mu = torch.zeros(len(x)) if cond is None else (cond.values + 1).float()
        if cond is not None and cond.dropped is not None:
            mu = torch.where(cond.dropped, torch.zeros_like(mu), mu)
        return -x + mu[:, None]


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 3.0])
def test_guidance_is_the_linear_combination_of_the_two_velocities(scale):
    field = ShiftField()
    guided = ClassifierFreeGuidance(field, scale)
    x, labels = torch.randn(4, 2), Labels(torch.tensor([0, 1, 2, 3]), 4)
    v = guided(torch.rand(4), x, labels)
    expected = -x + scale * (labels.values + 1).float()[:, None]  # v_null + s (v_cond - v_null), by hand
    torch.testing.assert_close(v, expected)
    assert field.calls == (1 if scale in (0.0, 1.0) else 2)  # scale 1 and 0 need one pass only
    torch.testing.assert_close(guided(torch.rand(4), x), -x)  # no conditions: the unconditional field


def test_guided_sampling_reaches_the_analytic_endpoint():
    # dx/dt = -x + s mu from x0: x(1) = x0 e^-1 + s mu (1 - e^-1); RK4 with 20 steps is accurate to ~1e-7
    field = ShiftField()
    labels = Labels(torch.tensor([0, 2]), 3)
    x0 = torch.randn(2, 1, generator=torch.Generator().manual_seed(0))
    out = integrate(ClassifierFreeGuidance(field, 2.0), x0, solver="rk4", steps=20, cond=labels).samples
    mu = (labels.values + 1).float()[:, None]
    torch.testing.assert_close(out, x0 * torch.exp(torch.tensor(-1.0)) + 2.0 * mu * (1 - torch.exp(torch.tensor(-1.0))),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("scale", [-0.5, float("nan"), "2", True])
def test_bad_guidance_scales_are_named(scale):
    with pytest.raises(UserError, match=r"guidance scale must be a number >= 0 \(1 = no guidance\), got"):
        ClassifierFreeGuidance(ShiftField(), scale)


def _random_head(unet):
    nn.init.normal_(unet.head.weight, std=0.1)  # the head starts at zero: make the output depend on the input
    return unet


def test_class_conditional_unet_uses_the_label_and_a_null_row():
    torch.manual_seed(0)
    unet = _random_head(UNet(1, 8, num_classes=3))
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    same_x = x[:1].expand(3, -1, -1, -1)
    v = unet(t[:1].expand(3), same_x, Labels(torch.tensor([0, 1, 2]), 3))
    assert (v[0] - v[1]).abs().max() > 1e-4 and (v[1] - v[2]).abs().max() > 1e-4  # each label its own velocity
    labels = Labels(torch.tensor([2, 0, 1]), 3)
    torch.testing.assert_close(unet(t, x), unet(t, x, labels.null()))  # no labels = every label withheld
    half = labels.drop(torch.tensor([True, False, False]))
    v_half, v_full, v_null = unet(t, x, half), unet(t, x, labels), unet(t, x, labels.null())
    torch.testing.assert_close(v_half[0], v_null[0])
    torch.testing.assert_close(v_half[1:], v_full[1:])


def test_unconditional_unet_is_unchanged_by_conditions_existing():
    torch.manual_seed(0)
    plain = UNet(1, 8)
    torch.manual_seed(0)
    conditional = UNet(1, 8, num_classes=10)
    assert set(conditional.state_dict()) - set(plain.state_dict()) == {"label_emb.weight"}
    for key, value in plain.state_dict().items():  # same initial weights: the embedding is drawn last
        assert torch.equal(value, conditional.state_dict()[key]), key
    with pytest.raises(ValueError, match="this UNet is unconditional"):
        plain(torch.rand(2), torch.randn(2, 1, 8, 8), Labels(torch.tensor([0, 1]), 10))


def test_conditional_unet_rejects_mismatched_labels():
    unet = UNet(1, 8, num_classes=3)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"built for 3 classes and a batch of 2 got 3 labels of 3 classes"):
        unet(torch.rand(2), x, Labels(torch.tensor([0, 1, 2]), 3))
    with pytest.raises(ValueError, match=r"built for 3 classes and a batch of 2 got 2 labels of 5 classes"):
        unet(torch.rand(2), x, Labels(torch.tensor([0, 4]), 5))
    with pytest.raises(ValueError, match=r"takes orwcfm.conditions.Labels, got Tensor"):
        unet(torch.rand(2), x, torch.tensor([0, 1]))


def test_conditions_follow_the_chunks_of_sampling():
    torch.manual_seed(0)
    unet = _random_head(UNet(1, 8, num_classes=4)).eval()
    labels = Labels(torch.tensor([3, 0, 2, 1, 3]), 4)
    whole = sample(unet, 5, (1, 8, 8), generator=torch.Generator().manual_seed(1), steps=3, cond=labels)
    chunked = sample(unet, 5, (1, 8, 8), generator=torch.Generator().manual_seed(1), steps=3, cond=labels, batch_size=2)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    shuffled = Labels(torch.tensor([0, 3, 2, 1, 3]), 4)  # a different label for samples 0 and 1 changes exactly those
    other = sample(unet, 5, (1, 8, 8), generator=torch.Generator().manual_seed(1), steps=3, cond=shuffled, batch_size=2)
    assert (other[:2] - whole[:2]).abs().max() > 1e-4
    torch.testing.assert_close(other[2:], whole[2:], atol=1e-5, rtol=0)
    with pytest.raises(UserError, match=r"got 4 conditions for 5 samples"):
        sample(unet, 5, (1, 8, 8), steps=1, cond=Labels(torch.tensor([0, 1, 2, 3]), 4))
