"""Conditions follow their samples through every reordering, and bad conditions fail with one line."""

import pytest
import torch

from orwcfm.conditions import Cond, Labels, check_cond, index_cond
from orwcfm.couplings import ot_coupling
from orwcfm.errors import UserError
from orwcfm.finetune.orw import systematic_resample


def test_labels_follow_a_permutation_and_a_resampling_with_repeats():
    labels = Labels(torch.tensor([3, 1, 4, 1, 5]), num_classes=10)
    assert isinstance(labels, Cond) and len(labels) == 5
    perm = torch.tensor([4, 2, 0, 1, 3])
    assert labels.index(perm).values.tolist() == [5, 4, 3, 1, 1]
    idx = systematic_resample(torch.tensor([0.0, 3.0, 1.0, 0.0, 1.0]), torch.Generator().manual_seed(0))
    # each sample's label is still its own: pair values with labels by construction (x = label as a float)
    x = labels.values.float()
    torch.testing.assert_close(labels.index(idx).values.float(), x[idx])
    assert index_cond(None, perm) is None


def test_labels_travel_with_an_ot_pairing_within_their_groups():
    g = torch.Generator().manual_seed(0)
    labels = Labels(torch.tensor([0, 1, 0, 1, 2, 2]), num_classes=3)
    x1 = torch.randn(6, 2, generator=g) + labels.values[:, None].float() * 10  # each class its own cluster
    x0 = torch.randn(6, 2, generator=g)
    pair = ot_coupling(x0, x1, groups=labels.group_ids())
    moved = labels.index(pair.index)
    assert torch.equal(moved.values, labels.values)  # within-group pairing: noise row i keeps its condition
    # and the data row each noise row got is from that condition's cluster (centres 0, 10, 20)
    assert torch.equal(torch.round(pair.x1[:, 0] / 10).long(), labels.values)


def test_repeat_each_and_cat():
    k = Labels.repeat_each(3, 2)
    assert k.values.tolist() == [0, 0, 1, 1, 2, 2]
    assert Labels.cat([k, Labels(torch.tensor([1]), 3)]).values.tolist() == [0, 0, 1, 1, 2, 2, 1]
    with pytest.raises(UserError, match=r"different numbers of classes: \[3, 4\]"):
        Labels.cat([k, Labels(torch.tensor([1]), 4)])


@pytest.mark.parametrize("values,num_classes,message", [
    (torch.tensor([0, 10]), 10, r"class label 10 is outside \[0, 10\)"),
    (torch.tensor([-1, 2]), 10, r"class label -1 is outside \[0, 10\)"),
    (torch.tensor([0.0, 1.0]), 10, r"class labels must be integers, got dtype torch.float32"),
    (torch.zeros(2, 2, dtype=torch.long), 10, r"1-D tensor of shape \(B,\), got \(2, 2\)"),
    ([0, 1], 10, r"1-D tensor of shape \(B,\), got list"),
    (torch.tensor([0]), 0, r"num_classes must be a positive integer, got 0"),
])
def test_bad_labels_are_named(values, num_classes, message):
    with pytest.raises(UserError, match=message):
        Labels(values, num_classes)


def test_check_cond_names_the_length_and_the_type():
    check_cond(None, 4)
    check_cond(Labels(torch.zeros(4, dtype=torch.long), 2), 4)
    with pytest.raises(UserError, match=r"got 3 conditions for 4 samples: one condition per sample expected"):
        check_cond(Labels(torch.zeros(3, dtype=torch.long), 2), 4)
    with pytest.raises(UserError, match=r"conditions must provide __len__, index\(idx\), group_ids\(\) and null\(\).*got list"):
        check_cond([0, 1, 2, 3], 4)


def test_null_and_drop_follow_reordering():
    labels = Labels(torch.tensor([1, 2, 0]), 3).drop(torch.tensor([False, True, False]))
    assert labels.embedding_index().tolist() == [1, 3, 0]  # row 3 = the null row
    moved = labels.index(torch.tensor([1, 1, 2]))
    assert moved.embedding_index().tolist() == [3, 3, 0] and moved.values.tolist() == [2, 2, 0]
    assert labels.null().embedding_index().tolist() == [3, 3, 3]
    both = Labels.cat([labels, Labels(torch.tensor([2]), 3)])
    assert both.embedding_index().tolist() == [1, 3, 0, 2]
    with pytest.raises(UserError, match=r"dropped mask of class labels must be a bool tensor of shape \(3,\)"):
        Labels(torch.tensor([1, 2, 0]), 3, dropped=torch.tensor([0, 1, 0]))
    with pytest.raises(UserError, match=r"dropped mask of class labels must be a bool tensor of shape \(3,\), got torch.bool \(2,\)"):
        labels.drop(torch.tensor([True, False]))
