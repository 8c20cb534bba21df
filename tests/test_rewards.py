"""Rewards: built-ins against independent computations, the output checks of call_reward, and loading by name."""

from __future__ import annotations

import io
import math
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from orwcfm.assets import digits_classifier
from orwcfm.data import load_dataset
from orwcfm.errors import UserError
from orwcfm.rewards import (
    DigitsTargetReward,
    DistanceReward,
    LinearReward,
    RegionReward,
    RewardError,
    ShiftedJpegReward,
    available_rewards,
    call_reward,
    jpeg_compressibility,
    jpeg_incompressibility,
    load_reward,
    reward_name,
    reward_options,
)
from orwcfm.rewards.digits import PROB_FLOOR


@pytest.fixture(scope="module")
def cache(orwcfm_cache):
    return orwcfm_cache  # shared by the session (tests/conftest.py): the classifier is trained once


@pytest.fixture(scope="module")
def classifier(cache):
    return digits_classifier(cache).model  # trained once for this module (~5 s), then read from the cache


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# ----------------------------------------------------------------------------------------------- digits


def test_digits_reward_is_the_target_probability_mass(classifier, digits):
    x = digits.x[:64]
    with torch.no_grad():
        probs = classifier.eval()(x).softmax(-1)
    targets = [1, 4, 7]
    expected = probs[:, targets].sum(-1)
    torch.testing.assert_close(DigitsTargetReward(classifier, targets)(x), expected, atol=1e-5, rtol=1e-5)
    log_reward = DigitsTargetReward(classifier, targets, log_prob=True)(x)
    floor = math.log(PROB_FLOOR)
    torch.testing.assert_close(log_reward, expected.log().clamp_min(floor), atol=1e-4, rtol=1e-4)
    assert (log_reward >= floor).all()


@pytest.mark.parametrize("log_prob", [False, True])
def test_digits_rewards_are_differentiable_in_x_and_match_finite_differences(classifier, digits, log_prob):
    """DRaFT, ReFL and Adjoint Matching back-propagate through the reward: its gradient in x must be the true one.
    Against central differences on a smooth classifier (tanh: the trained one's ReLU kinks make differences
    unreliable; the reward is returned in float32, hence eps 1e-3); on the trained classifier the gradient is
    nonzero; no gradient reaches either classifier's weights."""
    from orwcfm.conditions import Labels
    from orwcfm.rewards.digits import DigitsAlignReward

    torch.manual_seed(0)
    smooth = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    x = digits.x[:3].clone().requires_grad_(True)
    labels = Labels(torch.tensor([0, 3, 7]), 10)
    for net in (smooth, classifier):
        target, align = DigitsTargetReward(net, "even", log_prob=log_prob), DigitsAlignReward(net, log_prob=log_prob)
        for reward in (target, lambda z: align(z, labels)):
            (grad,) = torch.autograd.grad(reward(x).sum(), x)
            assert grad.abs().sum() > 0
            if net is smooth:
                direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
                eps = 1e-3
                with torch.no_grad():
                    fd = (reward(x + eps * direction).double().sum()
                          - reward(x - eps * direction).double().sum()) / (2 * eps)
                torch.testing.assert_close((grad * direction).sum().double(), fd, rtol=5e-3, atol=1e-4)
        copies = [*target._by_device.values(), *align._scorer._by_device.values()]
        assert copies and all(p.grad is None and not p.requires_grad for c in copies for p in c.parameters())


def test_digits_log_prob_is_floored():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.copy_(torch.tensor([0.0] + [-100.0] * 9))  # class 0 certain, every other class ~ e^-100
    r = DigitsTargetReward(net, [5], log_prob=True)(torch.zeros(3, 1, 8, 8))
    torch.testing.assert_close(r, torch.full((3,), math.log(PROB_FLOOR)))


def test_digits_reward_separates_real_even_and_odd_digits(cache, digits):
    even_reward = load_reward("digits-even", cache=cache)
    odd_reward = load_reward("digits-odd", cache=cache)
    is_even = digits.labels % 2 == 0
    assert even_reward(digits.x[is_even]).mean() > 0.9
    assert even_reward(digits.x[~is_even]).mean() < 0.1
    assert odd_reward(digits.x[~is_even]).mean() > 0.9
    target = load_reward("digits-target", cache=cache, targets=[3])
    assert target(digits.x[digits.labels == 3]).mean() > 0.9
    assert target(digits.x[digits.labels != 3]).mean() < 0.1


def test_digits_metrics(classifier, digits):
    reward = DigitsTargetReward(classifier, "even")
    even = digits.x[digits.labels % 2 == 0]
    metrics = reward.metrics(even)
    assert metrics["target_fraction"] > 0.95
    assert len(metrics["class_histogram"]) == 10
    assert sum(metrics["class_histogram"]) == pytest.approx(1.0)
    assert sum(metrics["class_histogram"][1::2]) < 0.05
    only_sevens = reward.metrics(digits.x[digits.labels == 7])
    assert only_sevens["target_fraction"] < 0.05 and only_sevens["class_histogram"][7] > 0.95


def test_digits_reward_does_not_touch_the_callers_classifier(classifier):
    classifier.train()
    try:
        DigitsTargetReward(classifier, "odd")(torch.zeros(2, 1, 8, 8))
        assert classifier.training and all(p.requires_grad for p in classifier.parameters())
    finally:
        classifier.eval()


@pytest.mark.parametrize("targets", ["evens", [], [1, 1], [10], [-1], [True], ["3"], 3.0])
def test_digits_bad_targets(classifier, targets):
    with pytest.raises(UserError, match="targets"):
        DigitsTargetReward(classifier, targets)


def test_digits_names(classifier):
    assert reward_name(DigitsTargetReward(classifier, "even")) == "digits-even"
    assert reward_name(DigitsTargetReward(classifier, [0, 3], log_prob=True)) == "digits-03-logprob"


# ------------------------------------------------------------------------------------------------- JPEG


def _independent_jpeg_kb(image: torch.Tensor) -> float:
    """JPEG size of one (C, H, W) image in [-1, 1], computed without the package."""
    array = np.clip(np.round((image.numpy().astype(np.float64) + 1) * 127.5), 0, 255).astype(np.uint8)
    pil = Image.fromarray(array[0], "L") if array.shape[0] == 1 else Image.fromarray(array.transpose(1, 2, 0), "RGB")
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=95)
    return len(buffer.getvalue()) / 1000


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_rewards(channels):
    gen = torch.Generator().manual_seed(0)
    flat = torch.full((1, channels, 32, 32), 0.3)
    noise = torch.rand(2, channels, 32, 32, generator=gen) * 2 - 1
    x = torch.cat([flat, noise])
    compress = jpeg_compressibility(x)
    assert compress.shape == (3,) and compress.dtype == torch.float32
    assert compress[0] > compress[1] and compress[0] > compress[2]
    for i in range(3):
        assert compress[i].item() == pytest.approx(-_independent_jpeg_kb(x[i]), abs=1e-6)
    torch.testing.assert_close(jpeg_incompressibility(x), -compress)
    assert load_reward("jpeg-compressibility") is jpeg_compressibility
    assert load_reward("jpeg-incompressibility") is jpeg_incompressibility


def test_jpeg_baseline_shifts_the_reward_and_only_rescales_the_paper_weights():
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    kb = torch.tensor([_independent_jpeg_kb(x[i]) for i in range(3)])
    shifted = load_reward("jpeg-compressibility", baseline_kb=0.8)
    assert isinstance(shifted, ShiftedJpegReward) and reward_name(shifted) == "jpeg-compressibility"
    torch.testing.assert_close(shifted(x), 0.8 - kb, atol=1e-6, rtol=0)
    torch.testing.assert_close(load_reward("jpeg-incompressibility", baseline_kb=0.8)(x), kb - 0.8, atol=1e-6, rtol=0)
    # the documented equivalence: exp(tau (r + c)) = exp(tau c) exp(tau r), so the weights' ratios are unchanged
    tau = 50.0
    w_plain, w_shift = torch.exp(tau * jpeg_compressibility(x).double()), torch.exp(tau * shifted(x).double())
    torch.testing.assert_close(w_shift / w_plain, torch.full((3,), math.exp(tau * 0.8), dtype=torch.float64), rtol=1e-4, atol=0)
    assert load_reward("jpeg-compressibility", baseline_kb=0.0) is jpeg_compressibility
    for bad in (float("nan"), "0.8", True):
        with pytest.raises(ValueError, match=r"baseline_kb must be a finite number of kilobytes, got " + re.escape(repr(bad))):
            load_reward("jpeg-compressibility", baseline_kb=bad)


def test_jpeg_clamps_out_of_range_pixels():
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.testing.assert_close(jpeg_compressibility(x * 3), jpeg_compressibility((x * 3).clamp(-1, 1)))
    assert not torch.equal(jpeg_compressibility(x * 3), jpeg_compressibility(x))


@pytest.mark.parametrize("shape", [(2, 2, 8, 8), (2, 8, 8), (2, 4, 8, 8)])
def test_jpeg_bad_shape(shape):
    with pytest.raises(ValueError, match=r"C = 1 or 3.*" + str(shape).replace("(", r"\(").replace(")", r"\)")):
        jpeg_compressibility(torch.zeros(shape))
    with pytest.raises(RewardError, match="reward 'jpeg-compressibility' raised ValueError"):
        call_reward(jpeg_compressibility, torch.zeros(shape), name=reward_name(jpeg_compressibility), step=3)


# -------------------------------------------------------------------------------------------------- toy


def test_toy_rewards_against_hand_computed_values():
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.0, 0.0]])
    torch.testing.assert_close(LinearReward()(x), torch.tensor([3.0, -0.5, 0.0]))
    torch.testing.assert_close(LinearReward([2.0, -1.0], bias=1.0)(x), torch.tensor([1.0, -1.5, 1.0]))
    torch.testing.assert_close(DistanceReward([1.0, 2.0])(x), torch.tensor([0.0, -math.sqrt(4 + 2.25), -math.sqrt(5)]))
    torch.testing.assert_close(RegionReward([0.0, 0.0], [1.0, 2.0])(x), torch.tensor([1.0, 0.0, 1.0]))  # closed box
    torch.testing.assert_close(RegionReward(-1.0, 1.0)(x), torch.tensor([0.0, 1.0, 1.0]))  # one value for all coords
    one_d = torch.tensor([[2.0], [-3.0]])
    torch.testing.assert_close(load_reward("linear", weights=[0.5])(one_d), torch.tensor([1.0, -1.5]))
    torch.testing.assert_close(load_reward("distance", point=1.0)(one_d), torch.tensor([-1.0, -4.0]))
    torch.testing.assert_close(load_reward("region", low=[0], high=[2])(one_d), torch.tensor([1.0, 0.0]))


def test_toy_reward_dimension_mismatch_is_reported_at_call_time():
    reward = DistanceReward([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"option 'point' of reward 'distance' has 3 entries .* dimension 2"):
        reward(torch.zeros(4, 2))
    with pytest.raises(RewardError, match=r"reward 'distance' raised ValueError: .*dimension 2.* at step 7"):
        call_reward(reward, torch.zeros(4, 2), name="distance", step=7)
    with pytest.raises(ValueError, match=r"shape \(B, d\), got \(4, 1, 2\)"):
        LinearReward()(torch.zeros(4, 1, 2))


@pytest.mark.parametrize("make", [
    lambda: DistanceReward([]),
    lambda: DistanceReward("0,0"),
    lambda: DistanceReward([float("nan")]),
    lambda: LinearReward([1.0], bias=[1.0]),
    lambda: RegionReward([1.0, 1.0], [0.0, 2.0]),
    lambda: RegionReward([0.0, 0.0], [1.0, 1.0, 1.0]),
])
def test_toy_bad_options(make):
    with pytest.raises(UserError, match="reward '(distance|linear|region)'"):
        make()


# ------------------------------------------------------------------------------------------ call_reward


def test_call_reward_passes_good_values_and_runs_without_grad():
    seen = {}

    def reward(x):
        seen["grad"] = torch.is_grad_enabled()
        return x.sum(1).double()

    x = torch.ones(3, 2, requires_grad=True)
    out = call_reward(reward, x, name="sum", step=0)
    assert seen["grad"] is False
    assert out.values.dtype == torch.float32 and not out.values.requires_grad
    torch.testing.assert_close(out.values, torch.full((3,), 2.0))
    assert out.valid.all() and out.num_bad == 0


@pytest.mark.parametrize("value", [
    torch.tensor([1, 0, 1]), torch.tensor([True, False, True]), np.array([1, 0, 1]), [1.0, 0.0, 1.0], np.array([1.0, 0.0, 1.0])
])
def test_call_reward_converts_ints_bools_arrays_and_lists(value):
    out = call_reward(lambda x: value, torch.zeros(3, 2), name="indicator", step=1)
    assert out.values.dtype == torch.float32
    assert out.values.tolist() == [1.0, 0.0, 1.0]


def test_call_reward_non_finite_stop():
    bad = torch.tensor([1.0, float("nan"), float("inf"), 0.0])
    with pytest.raises(RewardError) as info:
        call_reward(lambda x: bad, torch.zeros(4, 2), name="shaky", step=12)
    message = str(info.value)
    assert "'shaky'" in message and "step 12" in message and "2 non-finite values" in message and "out of 4" in message
    assert "on_bad_reward: drop" in message and "\n" not in message


def test_call_reward_non_finite_drop():
    bad = torch.tensor([1.0, float("nan"), -float("inf"), 0.0])
    out = call_reward(lambda x: bad, torch.zeros(4, 2), name="shaky", step=12, on_bad="drop")
    assert out.valid.tolist() == [True, False, False, True]
    assert out.num_bad == 2
    assert out.values[0] == 1.0 and math.isnan(out.values[1]) and out.values[2] == -math.inf
    with pytest.raises(RewardError, match=r"reward 'shaky' returned only non-finite values .*all 2.* step 3"):
        call_reward(lambda x: torch.full((2,), float("nan")), torch.zeros(2, 2), name="shaky", step=3, on_bad="drop")


def test_call_reward_bad_on_bad():
    with pytest.raises(ValueError, match="on_bad must be one of stop, drop"):
        call_reward(lambda x: x.sum(1), torch.zeros(2, 2), name="r", step=0, on_bad="ignore")


@pytest.mark.parametrize("shape", [(4, 1), (5,), (), (1, 4)])
def test_call_reward_wrong_shape(shape):
    with pytest.raises(RewardError) as info:
        call_reward(lambda x: torch.zeros(shape), torch.zeros(4, 2), name="shapes", step=2)
    message = str(info.value)
    assert f"shape {shape}" in message and "expected shape (4,)" in message
    assert "'shapes'" in message and "step 2" in message


@pytest.mark.parametrize("value, what", [
    (torch.zeros(2, dtype=torch.complex64), "returned values of dtype torch.complex64; expected real floats"),
    ("high", "returned a str"),
    (None, "returned a NoneType"),
    (["a", "b"], "returned a list that is not numeric"),
])
def test_call_reward_wrong_type(value, what):
    with pytest.raises(RewardError, match=f"reward 'odd' at step 4 {what}"):
        call_reward(lambda x: value, torch.zeros(2, 2), name="odd", step=4)


def test_call_reward_wraps_exceptions():
    def broken(x):
        raise KeyError("missing\nfeature")

    with pytest.raises(RewardError) as info:
        call_reward(broken, torch.zeros(2, 2), name=reward_name(broken), step=9)
    message = str(info.value)
    assert message.startswith("reward 'broken' raised KeyError:") and message.endswith("at step 9")
    assert "\n" not in message
    assert isinstance(info.value.__cause__, KeyError)
    assert isinstance(info.value, UserError)


def test_reward_name():
    class Scorer:
        name = "my-score"

        def __call__(self, x):
            return x.sum(1)

    def plain(x):
        return x.sum(1)

    assert reward_name(Scorer()) == "my-score"
    assert reward_name(plain) == "plain"
    assert reward_name(jpeg_compressibility) == "jpeg-compressibility"
    assert reward_name(LinearReward()) == "linear"


# ------------------------------------------------------------------------------------------------ loading

USER_MODULE = '''
import torch

SCALE = 2.0


def brightness(x):
    """Mean pixel value."""
    return x.flatten(1).mean(1)


def make_scaled(scale=1.0, offset=0.0):
    def scaled(x):
        return scale * x.flatten(1).sum(1) + offset
    return scaled


def make_broken(flag=True):
    raise RuntimeError("no GPU here")


def _private(x):
    return x
'''


@pytest.fixture
def user_module(tmp_path):
    path = tmp_path / "my_rewards_mod.py"
    path.write_text(USER_MODULE)
    return path


def test_available_rewards_and_options():
    assert available_rewards() == sorted([
        "clip", "digits-align", "digits-even", "digits-odd", "digits-target", "distance", "jpeg-compressibility",
        "jpeg-incompressibility", "linear", "region",
    ])
    assert reward_options("digits-target") == {"targets": "even", "log_prob": False, "dataset": "digits"}
    assert reward_options("digits-align") == {"log_prob": True, "dataset": "digits"}
    assert "cache" not in reward_options("digits-even")


def test_load_user_reward_from_file(user_module):
    x = torch.tensor([[1.0, 3.0], [0.0, -2.0]])
    brightness = load_reward(f"{user_module}:brightness")
    torch.testing.assert_close(brightness(x), torch.tensor([2.0, -1.0]))
    scaled = load_reward(f"{user_module}:make_scaled", scale=3.0, offset=1.0)
    torch.testing.assert_close(scaled(x), torch.tensor([13.0, -5.0]))
    assert reward_name(brightness) == "brightness"


def test_load_user_reward_from_module(user_module, monkeypatch):
    monkeypatch.syspath_prepend(str(user_module.parent))
    monkeypatch.delitem(sys.modules, "my_rewards_mod", raising=False)
    x = torch.tensor([[1.0, 3.0]])
    torch.testing.assert_close(load_reward("my_rewards_mod:brightness")(x), torch.tensor([2.0]))
    torch.testing.assert_close(load_reward("my_rewards_mod:make_scaled", scale=0.5)(x), torch.tensor([2.0]))
    with pytest.raises(UserError, match=r"reward factory 'my_rewards_mod:make_scaled' does not accept options slope"):
        load_reward("my_rewards_mod:make_scaled", slope=1.0)
    with pytest.raises(UserError, match=r"reward factory 'my_rewards_mod:make_broken' raised RuntimeError: no GPU here"):
        load_reward("my_rewards_mod:make_broken", flag=False)
    monkeypatch.delitem(sys.modules, "my_rewards_mod", raising=False)


def test_loader_errors(user_module, tmp_path):
    with pytest.raises(UserError, match=r"unknown reward 'digits-evne' \(did you mean 'digits-even'\?\); available: clip, "):
        load_reward("digits-evne")
    with pytest.raises(UserError, match=r"unknown option 'log_prb' for reward 'digits-even' \(did you mean 'log_prob'\?\); "
                                        r"accepted options: log_prob"):
        load_reward("digits-even", log_prb=True)
    with pytest.raises(UserError, match=r"unknown option 'quality' for reward 'jpeg-compressibility'; accepted options: baseline_kb$"):
        load_reward("jpeg-compressibility", quality=80)
    with pytest.raises(UserError, match=r"reward 'distance' needs option 'point'"):
        load_reward("distance")
    with pytest.raises(UserError, match="cannot import reward module 'no_such_reward_pkg.sub': no module named 'no_such_reward_pkg'"):
        load_reward("no_such_reward_pkg.sub:fn")
    missing = tmp_path / "nope.py"
    with pytest.raises(UserError, match=f"reward file not found: {missing}"):
        load_reward(f"{missing}:fn")
    with pytest.raises(UserError, match=r"has no attribute 'brightnes' \(did you mean 'brightness'\?\); "
                                        r"public callables there: brightness, make_broken, make_scaled"):
        load_reward(f"{user_module}:brightnes")
    with pytest.raises(UserError, match=r"module 'math' has no attribute 'nothing'"):
        load_reward("math:nothing")
    with pytest.raises(UserError, match=r"'.*:SCALE' is a float, not a callable reward"):
        load_reward(f"{user_module}:SCALE")
    with pytest.raises(UserError, match=r"reward factory '.*:make_broken' raised RuntimeError: no GPU here"):
        load_reward(f"{user_module}:make_broken", flag=False)
    with pytest.raises(UserError, match="must be written package.module:function"):
        load_reward("my_module:")
    broken = tmp_path / "broken_rewards.py"
    broken.write_text("import torch\ndef f(x):\n    return x +\n")
    with pytest.raises(UserError, match=f"reward file {broken} failed to load: SyntaxError"):
        load_reward(f"{broken}:f")


def test_factory_returning_a_non_callable(tmp_path):
    path = tmp_path / "factory_mod.py"
    path.write_text("def make(n=1):\n    return n\n")
    with pytest.raises(UserError, match=r"reward factory '.*:make' returned a int, not a callable reward"):
        load_reward(f"{path}:make", n=2)


def test_two_user_files_with_the_same_name_do_not_collide(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "rewards.py").write_text("def r(x):\n    return x.sum(1)\n")
    (tmp_path / "b" / "rewards.py").write_text("def r(x):\n    return -x.sum(1)\n")
    x = torch.ones(1, 2)
    assert load_reward(f"{tmp_path / 'a' / 'rewards.py'}:r")(x).item() == 2.0
    assert load_reward(f"{tmp_path / 'b' / 'rewards.py'}:r")(x).item() == -2.0


def test_conditional_rewards_get_the_conditions_and_one_argument_rewards_keep_working():
    from orwcfm.conditions import Labels

    x = torch.arange(8.0).reshape(4, 2)
    labels = Labels(torch.tensor([1, 0, 1, 0]), num_classes=2)
    picked = call_reward(lambda x, cond: x[torch.arange(len(x)), cond.values], x, name="pick", step=0, cond=labels)
    torch.testing.assert_close(picked.values, torch.tensor([1.0, 2.0, 5.0, 6.0]))
    plain = call_reward(lambda x: x.sum(1), x, name="sum", step=0, cond=labels)  # ignores the conditions
    torch.testing.assert_close(plain.values, torch.tensor([1.0, 5.0, 9.0, 13.0]))
    with pytest.raises(RewardError, match=r"reward 'short' at step 3 returned shape \(3,\); expected shape \(4,\)"):
        call_reward(lambda x, cond: x[:3, 0], x, name="short", step=3, cond=labels)
    with pytest.raises(ValueError, match=r"call_reward got 3 conditions for 4 samples"):
        call_reward(lambda x, cond: x[:, 0], x, name="r", step=0, cond=Labels(torch.tensor([0, 1, 0]), 2))
