"""Couplings: the OT pairing is the brute-force optimum and reports the permutation it applied."""

import itertools

import pytest
import torch

from orwcfm.couplings import get_coupling, independent_coupling, ot_coupling
from orwcfm.errors import UserError


def brute_force_cost(x0, x1):
    n = len(x0)
    return min(sum(((x0[i] - x1[p[i]]) ** 2).sum().item() for i in range(n)) for p in itertools.permutations(range(n)))


@pytest.mark.parametrize("seed", range(5))
def test_ot_coupling_is_optimal_on_small_cases(seed):
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(6, 2, 2, generator=g), torch.randn(6, 2, 2, generator=g)
    pair = ot_coupling(x0, x1)
    cost = ((pair.x0 - pair.x1) ** 2).sum().item()
    assert cost == pytest.approx(brute_force_cost(x0, x1), rel=1e-6)
    # index is a permutation and x1 was permuted by exactly it
    assert sorted(pair.index.tolist()) == list(range(6))
    torch.testing.assert_close(pair.x1, x1[pair.index])
    torch.testing.assert_close(pair.x0, x0)


def test_per_sample_data_follows_the_permutation():
    # each data point carries a label equal to its own first coordinate; after re-pairing, labels indexed with
    # the returned permutation must still match their samples
    x1 = torch.tensor([[3.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    labels = x1[:, 0].clone()
    x0 = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    pair = ot_coupling(x0, x1)
    assert pair.index.tolist() == [3, 1, 2, 0]
    torch.testing.assert_close(labels[pair.index], pair.x1[:, 0])


def test_independent_coupling_is_identity():
    x0, x1 = torch.randn(5, 3), torch.randn(5, 3)
    pair = independent_coupling(x0, x1)
    assert pair.index.tolist() == [0, 1, 2, 3, 4]
    assert pair.x1 is x1


def test_coupling_errors():
    with pytest.raises(UserError, match="unknown coupling 'exact'.*available: independent, ot"):
        get_coupling("exact")
    with pytest.raises(ValueError, match="same shape"):
        ot_coupling(torch.zeros(3, 2), torch.zeros(4, 2))


def brute_force_grouped_cost(x0, x1, groups):
    """Cheapest permutation that maps every row to a row of its own group (all permutations, filtered)."""
    n = len(x0)
    return min(sum(((x0[i] - x1[p[i]]) ** 2).sum().item() for i in range(n))
               for p in itertools.permutations(range(n)) if all(groups[p[i]] == groups[i] for i in range(n)))


@pytest.mark.parametrize("seed", range(4))
def test_ot_within_groups_never_crosses_a_group_and_is_optimal_within_each(seed):
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g)
    groups = torch.tensor([2, 0, 2, 1, 0, 2, 0])
    pair = ot_coupling(x0, x1, groups=groups)
    assert sorted(pair.index.tolist()) == list(range(7))
    assert torch.equal(groups[pair.index], groups)  # each noise row keeps a data row of its own condition
    torch.testing.assert_close(pair.x1, x1[pair.index])
    cost = ((pair.x0 - pair.x1) ** 2).sum().item()
    assert cost == pytest.approx(brute_force_grouped_cost(x0, x1, groups.tolist()), rel=1e-6)
    # a constraint can only cost: the unconstrained plan is cheaper or equal
    assert ((x0 - ot_coupling(x0, x1).x1) ** 2).sum().item() <= cost + 1e-9


def test_grouped_coupling_rejects_group_ids_of_the_wrong_length():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"one group id per sample, shape \(4,\), got \(3,\)"):
        ot_coupling(x, x, groups=torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match=r"one group id per sample, shape \(4,\), got \(3,\)"):
        independent_coupling(x, x, groups=torch.tensor([0, 1, 0]))
