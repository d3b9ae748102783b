"""GAMMA's network, losses, ablation switches and a tiny training run (gendet/method/gamma.py)."""

import numpy as np
import pytest
import torch

from gendet.config import ConfigError
from gendet.eval.pixel import pixel_metrics
from gendet.method.gamma.config import GammaConfig
from gendet.method.gamma.losses import gamma_loss, source_targets, token_targets
from gendet.method.gamma.networks import GammaNet, GammaOutput, GridContext, pixel_masks, predict_gamma
from gendet.method.gamma.trainer import train_gamma

GRID, SIZE, DIM = (8, 8), 64, 12
SMALL = GammaConfig(width=32, layers=1, heads=4, epochs=1, batch_size=8)


def _net(cfg=SMALL, k=3):
    torch.manual_seed(0)
    return GammaNet(DIM, GRID, k, cfg).eval()


def test_shapes_of_every_head():
    out = _net()(torch.randn(5, 64, DIM))
    assert out.cls_logit.shape == (5,) and out.seg_logits.shape == (5, 64) and out.source_logits.shape == (5, 64, 3)
    with pytest.raises(ValueError, match=r"\[B, 64, 12\]"):
        _net()(torch.randn(5, 63, DIM))


def test_reverse_cross_attention_lets_the_segmentation_features_move_the_classifier():
    x = torch.randn(4, 64, DIM)
    for reverse, moves in ((True, True), (False, False)):
        net = _net(GammaConfig(width=32, layers=1, heads=4, reverse_attention=reverse))
        before = net(x).cls_logit.detach().clone()
        with torch.no_grad():  # change only the segmentation branch's features
            for p in net.seg_features.parameters():
                p.add_(torch.randn_like(p))
        after = net(x).cls_logit
        assert (not torch.allclose(before, after, atol=1e-6)) is moves


def test_ablation_switches_remove_their_parameters():
    def names(cfg):
        return {n.split(".")[0] for n, _ in _net(cfg).named_parameters()}

    full = names(GammaConfig(width=32, heads=4))
    no_reverse = names(GammaConfig(width=32, heads=4, reverse_attention=False))
    no_seg = names(GammaConfig(width=32, heads=4, seg_heads=False, reverse_attention=False))
    assert {"reverse", "seg_out", "source_out", "seg_features", "source_features"} <= full
    assert "reverse" not in no_reverse and "seg_out" in no_reverse
    assert not {"reverse", "seg_out", "source_out", "seg_features", "source_features"} & no_seg
    sizes = [sum(p.numel() for p in _net(GammaConfig(width=32, heads=4, **kw)).parameters())
             for kw in ({}, {"reverse_attention": False}, {"seg_heads": False, "reverse_attention": False})]
    assert sizes[0] > sizes[1] > sizes[2]
    out = _net(GammaConfig(width=32, heads=4, seg_heads=False, reverse_attention=False))(torch.randn(2, 64, DIM))
    assert out.seg_logits is None and out.source_logits is None


@pytest.mark.parametrize("kw,fragment", [({"seg_heads": False}, "reverse_attention needs seg_heads"),
                                          ({"width": 30, "heads": 4}, "multiple of heads"),
                                          ({"mask_threshold": 1.0}, "mask_threshold"), ({"epochs": 0}, "epochs"),
                                          ({"seg_context": -1}, "seg_context")])
def test_config_is_checked(kw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        GammaConfig(**kw)


def test_grid_context_lets_only_neighbours_vote():
    torch.manual_seed(0)
    x = torch.randn(1, 64, 32)
    poked = x.clone()
    poked[0, 0] += 5.0 * torch.randn(32)  # token (0, 0)
    for layers, reach in ((1, 1), (2, 2)):  # each 3 x 3 layer reaches one token further
        ctx = GridContext(32, GRID, layers)
        moved = (ctx(poked) - ctx(x)).abs().sum(-1).reshape(GRID) > 1e-5
        rows, cols = torch.nonzero(moved, as_tuple=True)
        assert int(rows.max()) == int(cols.max()) == reach and bool(moved[reach, reach])
    assert torch.equal(GridContext(32, GRID, 0)(x), x)


def test_models_saved_before_seg_context_load_without_it():
    net = _net(GammaConfig(width=32, layers=1, heads=4, seg_context=2))
    assert any(n.startswith("seg_context.") for n, _ in net.named_parameters())
    spec = net.spec()
    assert spec["config"]["seg_context"] == 2 and GammaNet.from_spec(spec).cfg.seg_context == 2
    old = _net(GammaConfig(width=32, layers=1, heads=4, seg_context=0))
    old_spec = old.spec()
    del old_spec["config"]["seg_context"]
    rebuilt = GammaNet.from_spec(old_spec)
    rebuilt.load_state_dict(old.state_dict())  # strict: the same parameters
    assert rebuilt.cfg.seg_context == 0


def test_targets_and_losses():
    generated = torch.tensor([[0.0, 0.4, 0.5, 1.0]])
    assert source_targets(generated, torch.tensor([2])).tolist() == [[0, 0, 2, 2]]
    masks = np.zeros((1, 8, 8), np.uint8)
    masks[0, :4, :2] = 1
    assert token_targets(masks, (2, 2)).tolist() == [[0.5, 0.0, 0.0, 0.0]]
    net = _net()
    out = net(torch.randn(2, 64, DIM))
    loss, parts = gamma_loss(out, torch.tensor([0, 1]), torch.rand(2, 64), torch.randint(0, 3, (2, 64)), SMALL)
    assert set(parts) == {"cls", "seg", "dice", "source"}  # Dice by default (dice_weight 2)
    assert float(loss.detach()) == pytest.approx(parts["cls"] + parts["seg"] + 2 * parts["dice"] + 0.5 * parts["source"],
                                                 rel=1e-5)


def test_dice_counts_only_images_with_a_manipulated_token_and_rewards_overlap():
    cfg = GammaConfig(width=32, heads=4, dice_weight=2.0)
    target = torch.zeros(3, 4)
    target[1, :2] = 1.0  # image 0 authentic (no Dice), images 1 and 2 partial fakes
    target[2, 3] = 1.0

    def dice_of(seg_logits):
        out = GammaOutput(cls_logit=torch.zeros(3), seg_logits=seg_logits, source_logits=None)
        loss, parts = gamma_loss(out, torch.tensor([0, 1, 1]), target, None, cfg)
        assert float(loss.detach()) == pytest.approx(parts["cls"] + parts["seg"] + 2.0 * parts["dice"], rel=1e-5)
        return parts["dice"]

    right = torch.where(target > 0, 10.0, -10.0)
    wrong = -right
    assert dice_of(right) < 0.01 < 0.7 < dice_of(wrong)  # 1 - 1/5 with the +1 smoothing on 4 tokens
    right[0] = 10.0  # the authentic image's tokens: BCE's business, not Dice's
    assert dice_of(right) < 0.01
    out = GammaOutput(cls_logit=torch.zeros(1), seg_logits=torch.zeros(1, 4), source_logits=None)
    assert "dice" not in gamma_loss(out, torch.tensor([0]), torch.zeros(1, 4), None, cfg)[1]  # no manipulated token


def test_pixel_masks_upsample_bilinearly_and_threshold():
    probs = torch.zeros(1, 4)
    probs[0, 0] = 1.0  # the top-left cell of a 2x2 grid
    mask = pixel_masks(probs, (2, 2), (8, 8))
    assert mask.shape == (1, 8, 8) and mask.dtype == bool
    assert mask[0, :3, :3].all() and not mask[0, 4:, :].any() and not mask[0, :, 4:].any()


def _synthetic(n, seed):
    """Token grids of noise; fakes carry a square of another texture (a fixed direction added in
    proportion to each token's covered area) at a random pixel position, not aligned to tokens."""
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(99).normal(size=DIM)
    direction *= 4.0 / np.linalg.norm(direction)
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    labels = np.arange(n) % 2
    for i in np.flatnonzero(labels):
        side = int(rng.integers(18, 40))
        top, left = rng.integers(0, SIZE - side, size=2)
        masks[i, top:top + side, left:left + side] = 1
    fractions = token_targets(masks, GRID)
    tokens = torch.tensor(rng.normal(size=(n, 64, DIM)), dtype=torch.float32)
    tokens += fractions[..., None] * torch.tensor(direction, dtype=torch.float32)
    return tokens, torch.tensor(labels), fractions, masks


def test_a_tiny_run_learns_where_the_fake_region_is(torch_one_thread):
    tokens, labels, fractions, _ = _synthetic(256, 0)
    sources = source_targets(fractions, labels)  # family 1 made the square
    cfg = GammaConfig(width=32, layers=1, heads=4, epochs=8, batch_size=32, lr=3e-3)
    net, history = train_gamma(tokens, labels, grid=GRID, cfg=cfg, token_masks=fractions, token_sources=sources,
                               num_sources=2)
    assert history[-1]["loss"] < history[0]["loss"] and set(history[0]) >= {"cls", "seg", "source"}
    test_tokens, test_labels, _, test_masks = _synthetic(80, 1)
    pred = predict_gamma(net, test_tokens)
    acc = float(((pred["score"] > 0.5).long() == test_labels).float().mean())
    masks = pixel_masks(pred["token_probs"], GRID, (SIZE, SIZE), cfg.mask_threshold)
    metrics = pixel_metrics(list(masks), list(test_masks), ["square"] * len(masks))
    print(f"tiny GAMMA: acc {acc:.3f}, mean IoU {metrics['mean_iou']:.3f}, F1 {metrics['mean_f1']:.3f}")
    assert acc > 0.9
    assert metrics["mean_iou"] > 0.5


def test_training_without_masks_needs_the_ablation(torch_one_thread):
    tokens, labels, _, _ = _synthetic(16, 0)
    with pytest.raises(ConfigError, match="token_masks"):
        train_gamma(tokens, labels, grid=GRID, cfg=SMALL)
    cfg = GammaConfig(width=32, layers=1, heads=4, epochs=1, batch_size=8, seg_heads=False, reverse_attention=False)
    net, history = train_gamma(tokens, labels, grid=GRID, cfg=cfg)
    assert set(history[0]) == {"epoch", "loss", "cls"} and set(predict_gamma(net, tokens)) == {"score"}
    again, _ = train_gamma(tokens, labels, grid=GRID, cfg=cfg)
    assert torch.equal(predict_gamma(again, tokens)["score"], predict_gamma(net, tokens)["score"])  # seeded


def test_a_network_rebuilds_from_its_spec():
    net = _net(GammaConfig(width=32, heads=4, reverse_attention=False))
    twin = GammaNet.from_spec(net.spec())
    twin.load_state_dict(net.state_dict())
    x = torch.randn(2, 64, DIM)
    assert torch.equal(twin.eval()(x).cls_logit, net(x).cls_logit) and twin.cfg == net.cfg
