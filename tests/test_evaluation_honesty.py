"""What the evaluation claims, checked against independent computations: the reward and gold classifiers train on
disjoint halves with different architectures, the W2-to-reference comes with its finite-sample floor, and the
digits-FD is also measured against the target classes' real digits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import orwcfm.assets as assets
from orwcfm.assets import ClassifierRecipe, classifier_halves, digits_classifier, gold_classifier, split_classifier
from orwcfm.checkpoint import load_checkpoint
from orwcfm.data import TensorData, load_dataset
from orwcfm.finetune.evaluate import FLOOR_SEED_OFFSET, DigitsJudge, judge_dataset, make_judge
from orwcfm.finetune.trainer import ORWCFMTrainer
from orwcfm.metrics import empirical_w2, frechet_distance
from orwcfm.models import DigitsClassifier, MLPClassifier, accuracy
from orwcfm.rewards import load_reward
from orwcfm.sampling import integrate


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def reward_clf(orwcfm_cache):
    return digits_classifier(orwcfm_cache)  # the session's cached classifier (trained once, seconds)


@pytest.fixture(scope="module")
def gold_clf(orwcfm_cache):
    return gold_classifier(orwcfm_cache)


# ----------------------------------------------------------------------------------------------- two classifiers


def test_reward_and_gold_classifiers_train_on_disjoint_halves(reward_clf, gold_clf, digits):
    n = len(digits)
    a, b = set(reward_clf.train_indices.tolist()), set(gold_clf.train_indices.tolist())
    assert not a & b and a | b == set(range(n))
    assert abs(len(a) - len(b)) <= 1
    # each one is tested on the other's training half, and the accuracy it reports is that one
    assert set(reward_clf.heldout_indices.tolist()) == b and set(gold_clf.heldout_indices.tolist()) == a
    for info, other in ((reward_clf, gold_clf), (gold_clf, reward_clf)):
        x, y = digits.x[other.train_indices], digits.labels[other.train_indices]
        assert info.heldout_accuracy == pytest.approx(accuracy(info.model, x, y), abs=1e-6)
    assert reward_clf.heldout_accuracy >= 0.95  # measured 0.970 (CNN on half A, tested on half B)
    assert gold_clf.heldout_accuracy >= 0.93  # measured 0.959 (MLP on half B, tested on half A)
    assert reward_clf.path != gold_clf.path


def test_each_classifier_is_trained_on_exactly_its_half(tmp_path, monkeypatch, digits):
    # A spy on the training call: the recorded indices must be the rows actually trained on, not a label.
    seen: dict[str, torch.Tensor] = {}
    real = assets.train_classifier

    def spy(model, x, labels, **kw):
        seen[type(model).__name__] = x.clone()
        return real(model, x, labels, **{**kw, "epochs": 1})

    monkeypatch.setattr(assets, "train_classifier", spy)
    tiny = {role: ClassifierRecipe(r.kind, r.options, epochs=1) for role, r in assets.RECIPES.items()}
    rew = split_classifier("digits", "reward", tmp_path, recipe=tiny["reward"])
    gold = split_classifier("digits", "gold", tmp_path, recipe=tiny["gold"])
    assert torch.equal(seen["DigitsClassifier"], digits.x[rew.train_indices])
    assert torch.equal(seen["MLPClassifier"], digits.x[gold.train_indices])
    a, b = classifier_halves(len(digits))
    assert torch.equal(rew.train_indices, a) and torch.equal(gold.train_indices, b)
    # a second call reads the cache: no training, same model, same split
    seen.clear()
    again = split_classifier("digits", "gold", tmp_path, recipe=tiny["gold"])
    assert not seen and again.path == gold.path and torch.equal(again.train_indices, gold.train_indices)
    for key, value in gold.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[key], value, rtol=0, atol=0)


def test_gold_classifier_is_another_architecture(reward_clf, gold_clf):
    assert isinstance(reward_clf.model, DigitsClassifier) and isinstance(gold_clf.model, MLPClassifier)
    assert any(isinstance(m, nn.Conv2d) for m in reward_clf.model.modules())
    assert not any(isinstance(m, nn.Conv2d) for m in gold_clf.model.modules())  # not a CNN under another name
    assert gold_clf.model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert MLPClassifier(image_size=28)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)  # MNIST-sized inputs
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\), got \(2, 1, 7, 7\)"):
        gold_clf.model(torch.zeros(2, 1, 7, 7))


def test_split_classifier_is_generic_over_the_data_set(tmp_path, monkeypatch):
    # A fake 28x28 data set stands in for mnist5k: both roles build for its shape, under their own cache keys.
    gen = torch.Generator().manual_seed(0)
    fake = TensorData("fake28", torch.rand(40, 1, 28, 28, generator=gen) * 2 - 1, torch.arange(40) % 10, "image")
    monkeypatch.setattr(assets, "load_dataset", lambda name: fake if name == "fake28" else load_dataset(name))
    infos = {role: split_classifier("fake28", role, tmp_path, recipe=ClassifierRecipe(r.kind, r.options, epochs=1))
             for role, r in assets.RECIPES.items()}
    assert infos["reward"].model(fake.x[:2]).shape == infos["gold"].model(fake.x[:2]).shape == (2, 10)
    assert len(set(infos["reward"].train_indices.tolist()) | set(infos["gold"].train_indices.tolist())) == 40
    assert all(info.path.name.startswith(f"fake28-{role}-classifier-") for role, info in infos.items())
    bad = TensorData("vec", torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), "vector")
    monkeypatch.setattr(assets, "load_dataset", lambda name: bad)
    with pytest.raises(assets.UserError, match="square images"):
        split_classifier("vec", "gold", tmp_path)


# ----------------------------------------------------------------------------------------------- the W2 floor


def test_w2_floor_is_two_independent_reference_sets(toy_reference, tmp_path):
    n, steps = 64, 4
    reference = load_checkpoint(toy_reference).build_model("ema")
    config = dict(eval_samples=n, eval_sampling={"solver": "midpoint", "steps": steps}, savedir=str(tmp_path),
                  run_name="floor", seed=5, ema_decay=None)
    trainer = ORWCFMTrainer(load_checkpoint(toy_reference).build_model("ema"), config, "cpu",
                            reward_fn=lambda x: -x[:, 0].abs(), progress=False)
    trainer.load_pretrained(toy_reference)
    with torch.no_grad():  # move the model off the reference, so a floor measured from the model would differ
        for p in trainer.current_model().parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    first, second = trainer.evaluate().scalars(), trainer.evaluate().scalars()

    # Independently: the reference from the evaluation noise and from noise of another seed, same N.
    eval_noise = torch.randn((n, 2), generator=torch.Generator().manual_seed(5 + 1_000_003))
    floor_noise = torch.randn((n, 2), generator=torch.Generator().manual_seed(5 + FLOOR_SEED_OFFSET))
    y = integrate(reference, eval_noise, solver="midpoint", steps=steps).samples
    y2 = integrate(reference, floor_noise, solver="midpoint", steps=steps).samples
    x = integrate(trainer.current_model().eval(), eval_noise, solver="midpoint", steps=steps).samples
    assert first["w2_to_reference_floor"] == pytest.approx(empirical_w2(y, y2), rel=1e-5)
    assert first["w2_to_reference_floor"] > 0.1
    assert first["w2_to_reference"] == pytest.approx(empirical_w2(x, y), rel=1e-5)
    assert first["w2_to_reference_floor"] != pytest.approx(empirical_w2(x, y2), rel=1e-3)  # ref vs ref, not model
    assert second["w2_to_reference_floor"] == first["w2_to_reference_floor"]  # computed once per run


# ----------------------------------------------------------------------------------------------- FD to the targets


def test_digits_fd_target_is_the_fd_to_the_target_classes(reward_clf, digits):
    judge = make_judge("digits", load_reward("digits-target", targets=[1, 7]))
    assert isinstance(judge, DigitsJudge) and judge.targets == (1, 7)
    features = reward_clf.model.eval().features
    x = digits.x[:400]  # all classes: far from the 1s and 7s alone
    with torch.no_grad():
        expected = frechet_distance(features(x), features(digits.x[(digits.labels == 1) | (digits.labels == 7)]))
        to_all = frechet_distance(features(x), features(digits.x))
    out = judge(x, None)
    assert out["digits_fd_target"] == pytest.approx(expected, rel=1e-6)
    assert out["digits_fd_data"] == pytest.approx(to_all, rel=1e-6)
    assert expected > 2 * to_all  # the two statistics are far apart here, so a mix-up would show

    even = make_judge("digits", load_reward("digits-even"))
    on_even = even(digits.x[digits.labels % 2 == 0], None)
    assert on_even["digits_fd_target"] == pytest.approx(0.0, abs=1e-5)  # the even digits *are* the target data
    assert on_even["digits_fd_data"] > 1.0  # ... and only half of all the data
    assert "digits_fd_target" not in make_judge("digits", None)(x, None)  # no digit targets, no target FD


# ------------------------------------------------------------------------------------- the 28x28 mnist5k digits


def test_mnist5k_reward_and_judge_use_the_mnist5k_classifiers_and_digits(monkeypatch):
    # Training the two 28x28 classifiers takes minutes: record which ones are asked for, and hand back tiny ones.
    asked = []

    def fake(dataset="digits", role="reward", cache=None, **kw):
        asked.append((dataset, role))
        torch.manual_seed(0)
        size = 28 if dataset == "mnist5k" else 8
        model = DigitsClassifier(image_size=size, width=4) if role == "reward" else MLPClassifier(image_size=size, hidden=8)
        return assets.ClassifierInfo(model.eval(), 0.0, None, dataset, role)

    monkeypatch.setattr(assets, "split_classifier", fake)
    reward = load_reward("digits-even", dataset="mnist5k")
    assert asked == [("mnist5k", "reward")] and reward.dataset == "mnist5k" and reward.name == "mnist5k-even"
    judge = make_judge(judge_dataset("auto", reward), reward)  # the reward's data set, not the sample shape
    assert ("mnist5k", "reward") in asked[1:] and ("mnist5k", "gold") in asked[1:]
    real = load_dataset("mnist5k")
    assert judge.data_features.shape == (len(real.x), 16)  # every real 28x28 digit, in the reward CNN's features
    out = judge(real.x[:50], None)
    assert {"digits_fd_data", "digits_fd_target", "gold_target_fraction"} <= set(out)
    make_judge(judge_dataset("auto", None, reference_data="digits"), None)
    assert asked[-1][0] == "digits"  # no reward data set: the reference's pretraining data picks it
    with pytest.raises(Exception, match=r"'dataset' must be one of digits, mnist5k, got 'cifar'"):
        load_reward("digits-even", dataset="cifar")
