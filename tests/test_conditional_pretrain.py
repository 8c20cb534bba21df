"""Class-conditional pretraining: the labels reach the loss, the null label learns the unconditional field."""

import pytest
import torch

from orwcfm.assets import _digest, reference_config, reference_key
from orwcfm.checkpoint import load_checkpoint
from orwcfm.conditions import Labels
from orwcfm.config import pretrain_config
from orwcfm.data import load_dataset
from orwcfm.data.base import TensorData
from orwcfm.errors import UserError
from orwcfm.sampling import sample
from orwcfm.train import pretrain, resolve_model_spec


def _nearest_class(x, means):
    """(N,) index of the nearest class mean (Euclidean) of each (N, 1, 8, 8) sample."""
    return torch.cdist(x.flatten(1), means.flatten(1)).argmin(1)


@pytest.mark.slow
def test_conditional_pretraining_follows_the_labels_and_keeps_an_unconditional_field(tmp_path):
    # Two digits (0 and 1: their class means are far apart), a small UNet, 600 steps: enough for the labels to
    # steer the samples; the test fails if the labels never reach the network (both labels would give one mix).
    cfg = pretrain_config("digits", data={"name": "digits", "options": {"digits": [0, 1]}}, steps=600, batch_size=64,
                          conditional=True, condition_dropout=0.2, num_samples=16, log_every=100, checkpoint_every=600,
                          model={"kind": "unet", "options": {"base_channels": 16}}, ema_decay=None)
    result = pretrain(cfg, tmp_path, progress=False)
    loaded = load_checkpoint(result.checkpoint)
    assert loaded.spec.options["num_classes"] == 2
    model = loaded.build_model("raw")
    data = load_dataset("digits", digits=[0, 1])
    means = torch.stack([data.x[data.labels == k].mean(0) for k in (0, 1)])
    g = torch.Generator().manual_seed(5)
    for k in (0, 1):
        xs = sample(model, 200, (1, 8, 8), generator=g, solver="midpoint", steps=10, cond=Labels(torch.full((200,), k), 2))
        assert (_nearest_class(xs, means) == k).float().mean() > 0.95, k
    free = sample(model, 400, (1, 8, 8), generator=g, solver="midpoint", steps=10)  # the null label: both digits
    share_of_ones = (_nearest_class(free, means) == 1).float().mean().item()
    assert 0.25 < share_of_ones < 0.75  # data: 0.50


def test_conditional_settings_are_checked(tmp_path):
    with pytest.raises(UserError, match=r"config key 'condition_dropout' must be in \[0, 1\), got 1.0"):
        pretrain_config("digits", conditional=True, condition_dropout=1.0)
    with pytest.raises(UserError, match=r"config key 'conditional' needs a data set with class labels; 'moons' has none"):
        pretrain(pretrain_config("moons", conditional=True, steps=1), tmp_path / "a", progress=False)
    vectors = TensorData("labelled-vectors", torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]), "vector")
    with pytest.raises(UserError, match=r"config key 'conditional' needs a model that takes class labels \(unet\), got 'mlp'"):
        resolve_model_spec(pretrain_config("moons", conditional=True), vectors)


def test_unconditional_references_keep_their_cache_folder():
    # adding the conditional keys must not rename (and so retrain) the references users already have cached
    plain = reference_config("digits")
    key = reference_key(plain)
    assert "conditional" not in key and "condition_dropout" not in key
    conditional = reference_config("digits-cond")
    assert conditional.conditional and conditional.condition_dropout == 0.1 and conditional.data.name == "digits"
    assert conditional.steps == plain.steps
    assert _digest(reference_key(conditional)) != _digest(key)
