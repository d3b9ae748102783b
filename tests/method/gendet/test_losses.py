"""Eqs. 1-3 on inputs small enough to compute by hand."""

from __future__ import annotations

import math

import pytest
import torch

from gendet.method.gendet import losses

Z_T = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
Z_S = torch.tensor([[0.0, 2.0, 2.0], [0.0, 1.0, 3.0]])


def test_eq1_reduces_over_elements_then_averages_over_batch():
    # sample 1: 1 + 0 + 4 = 5; sample 2: 0 + 1 + 0 = 1; mean over the batch = 3 ("sum"), / 3 elements = 1 ("mean")
    assert losses.dis_real(Z_T, Z_S, "sum").item() == pytest.approx(3.0)
    assert losses.dis_real(Z_T, Z_S).item() == pytest.approx(1.0)  # the default: Eq. 2's scale


def test_eq3_is_eq1_on_augmented_features():
    assert losses.dis_augmenter(Z_T, Z_S).item() == pytest.approx(losses.dis_real(Z_T, Z_S).item())
    assert losses.dis_augmenter(Z_T, Z_S, "sum").item() == pytest.approx(3.0)


def test_eq2_margin_active():
    # sample 1: unit vectors (1,0) and (0,1): distance^2 = 2 -> hinge max(3 - 2, 0) = 1
    # sample 2: (3,4)/5 and (3,4)/5 are equal: distance^2 = 0 -> hinge 3
    z_t = torch.tensor([[2.0, 0.0], [3.0, 4.0]])
    z_s = torch.tensor([[0.0, 5.0], [6.0, 8.0]])
    assert losses.dis_fake(z_t, z_s, margin=3.0, alpha=0.1).item() == pytest.approx(0.1 * (1 + 3) / 2)


def test_eq2_margin_inactive_is_zero_and_has_zero_gradient():
    # opposite directions: distance^2 = 4 > M = 2 -> no loss
    z_t = torch.tensor([[1.0, 1.0]])
    z_s = torch.tensor([[-2.0, -2.0]], requires_grad=True)
    loss = losses.dis_fake(z_t, z_s, margin=2.0, alpha=0.1)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(z_s.grad) == 0


def test_eq2_partly_active_batch():
    # sample 1 at 45 degrees: distance^2 = 2 - 2 cos(pi/4); sample 2 opposite: inactive
    z_t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    z_s = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    gap = 2 - 2 * math.cos(math.pi / 4)
    expected = 0.5 * ((2.0 - gap) + 0.0) / 2
    assert losses.dis_fake(z_t, z_s, margin=2.0, alpha=0.5).item() == pytest.approx(expected)


def test_classification_is_cross_entropy():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    labels = torch.tensor([1, 0])
    expected = (math.log(2) + math.log(1 + math.exp(-2))) / 2
    assert losses.classification(logits, labels).item() == pytest.approx(expected)
