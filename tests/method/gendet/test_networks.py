"""Tokenisation of a feature vector and the shapes of every network."""

from __future__ import annotations

import pytest
import torch

from gendet.method.gendet.networks import Arch, Augmenter, Classifier, Teacher, TeacherHead, discrepancy, from_tokens, to_tokens


@pytest.mark.parametrize("dim, tokens", [(768, 4), (512, 3), (196, 1), (1024, 6)])
def test_feature_becomes_ceil_d_over_196_tokens_keeping_every_coordinate(dim, tokens):
    x = torch.randn(3, dim)
    t = to_tokens(x, 196)
    assert t.shape == (3, tokens, 196)
    assert torch.equal(t[0, -1, :5], x[0, 196 * (tokens - 1):196 * (tokens - 1) + 5])  # contiguous chunks
    assert torch.count_nonzero(t.flatten(1)[:, dim:]) == 0  # padding is zeros
    assert torch.equal(from_tokens(t, dim), x)
    assert Arch(feature_dim=dim).tokens == tokens


def test_network_shapes():
    torch.manual_seed(0)
    arch = Arch(feature_dim=100, width=32, heads=4)
    x = torch.randn(5, 100)
    z = Teacher(arch)(x)
    assert z.shape == (5, arch.z_dim) == (5, 128)
    assert Augmenter(arch)(x).shape == x.shape
    assert TeacherHead(arch)(x).shape == (5, 2)
    teacher, student = Teacher(arch), Teacher(arch)
    d = discrepancy(teacher, student, x)
    assert d.shape == (5, 128) and Classifier(arch)(d).shape == (5, 2)
    # Eq. 4 compares the two networks: zero against itself, positive against another
    assert torch.count_nonzero(discrepancy(teacher, teacher, x)) == 0
    assert bool((d.sum(dim=1) > 0).all())
    student.load_state_dict(teacher.state_dict())
    assert torch.count_nonzero(discrepancy(teacher, student, x)) == 0


def test_positional_embedding_tells_chunks_apart():
    # Swapping two chunks of the input must not just swap the output chunks.
    torch.manual_seed(0)
    arch = Arch(feature_dim=64, width=32, heads=4)
    net = Teacher(arch)
    x = torch.randn(2, 64)
    swapped = torch.cat([x[:, 32:], x[:, :32]], dim=1)
    out, out_swapped = net(x), net(swapped)
    assert not torch.allclose(torch.cat([out_swapped[:, 32:], out_swapped[:, :32]], dim=1), out, atol=1e-4)


def test_augmenter_starts_as_the_identity_and_stays_within_its_bound():
    from gendet.method.gendet.networks import Arch, Augmenter

    torch.manual_seed(0)
    arch = Arch(feature_dim=40, width=16, heads=2)
    x = torch.randn(64, 40) * 3
    g = Augmenter(arch, bound=0.25)
    assert torch.equal(g(x), x)  # the gate starts at zero
    with torch.no_grad():
        for p in g.parameters():
            p.add_(torch.randn_like(p) * 10)  # any weights at all
    shift = (g(x) - x).norm(dim=1) / x.norm(dim=1)
    assert shift.max() <= 0.25 + 1e-5 and shift.mean() > 0.05
