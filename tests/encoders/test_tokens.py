"""Token grids: spectrum patch measurements and open_clip ViT patch tokens, and masks taken
through an encoder's geometry onto its grid (gendet/encoders/tokens.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gendet import GendetError
from gendet.encoders.base import Encoder
from gendet.encoders.registry import load_encoder
from gendet.encoders.tokens import PATCH_DIM, TOKEN_DIM, coarsen, grid_fractions, model_tokens, reads_tokens

DEBUG_CLIP = "open_clip:GenDet-Debug-ViT/none"


def _photo(name: str) -> np.ndarray:
    import skimage.data

    path = next(Path(skimage.data.__file__).parent.glob(f"{name}.*"))
    return np.asarray(Image.open(path).convert("RGB"))


def _batch(enc, images):
    return torch.stack([enc.preprocess(Image.fromarray(np.ascontiguousarray(im))) for im in images])


@pytest.mark.parametrize("name,grid", [("spectrum:v1", (8, 8)), ("spectrum:v2", (16, 16))])
def test_spectrum_token_grid_shape_and_the_pooled_feature_unchanged(name, grid):
    enc = load_encoder(name)
    assert enc.token_grid == grid and enc.token_dim == TOKEN_DIM == 3 * PATCH_DIM == 288
    rng = np.random.default_rng(0)
    batch = _batch(enc, [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(3)])
    pooled, tokens = enc.features_and_tokens(batch)
    assert tokens.shape == (3, grid[0] * grid[1], 288) and tokens.dtype == torch.float32 and tokens.isfinite().all()
    assert torch.equal(pooled, enc(batch))  # one residual for both; stores of the pooled column stay valid
    assert torch.equal(tokens, enc.tokens(batch))


def test_a_spectrum_token_measures_its_own_patch_then_around_it():
    """The first PATCH_DIM columns (gendet 0.5's tokens) see only the token's own patch; the patches
    centred on its edges and corners reach 8 px past it, so a change inside one token moves the edge
    columns of the tokens beside it and the corner columns of its 3 x 3 neighbourhood, nothing further."""
    enc = load_encoder("spectrum:v2")
    image = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    changed = image.copy()
    changed[16 * 5 + 1:16 * 6 - 1, 16 * 9 + 1:16 * 10 - 1] //= 2  # the inside of the token at row 5, col 9
    a, b = enc.tokens(_batch(enc, [image, changed]))
    own = (a - b)[:, :PATCH_DIM].abs().amax(-1) > 1e-5
    assert own.nonzero().flatten().tolist() == [5 * 16 + 9]
    edges = ((a - b)[:, PATCH_DIM:2 * PATCH_DIM].abs().amax(-1) > 1e-5).reshape(16, 16)
    assert edges.nonzero().tolist() == [[4, 9], [5, 8], [5, 9], [5, 10], [6, 9]]
    corners = ((a - b)[:, 2 * PATCH_DIM:].abs().amax(-1) > 1e-5).reshape(16, 16)
    assert corners.nonzero().tolist() == [[r, c] for r in (4, 5, 6) for c in (8, 9, 10)]


def test_a_model_of_0_5_tokens_reads_their_first_columns():
    tokens = torch.randn(2, 4, TOKEN_DIM)
    assert torch.equal(model_tokens(tokens, "spectrum:v2", PATCH_DIM), tokens[..., :PATCH_DIM])
    assert model_tokens(tokens, "spectrum:v2", TOKEN_DIM) is tokens
    assert reads_tokens("spectrum:v1", TOKEN_DIM, PATCH_DIM) and reads_tokens("spectrum:v1", TOKEN_DIM, TOKEN_DIM)
    assert not reads_tokens("spectrum:v1", PATCH_DIM, TOKEN_DIM)  # a 0.5 store cannot feed a model of today's tokens
    assert not reads_tokens(DEBUG_CLIP, 768, PATCH_DIM)


def test_spectrum_tokens_find_an_upsampled_region_on_photos_they_never_saw():
    """A logistic regression on single tokens tells a nearest-upsampled region (a decoder's
    fingerprint) from the photo around it, trained on some photos and tested on others."""
    from sklearn.linear_model import LogisticRegression

    enc, rng = load_encoder("spectrum:v2"), np.random.default_rng(0)
    data = {}
    for part, names in {"train": ["astronaut", "coffee", "chelsea"], "test": ["rocket", "motorcycle_left"]}.items():
        xs, ys = [], []
        for name in names:
            photo = _photo(name)
            for _ in range(2):
                y, x = rng.integers(0, photo.shape[0] - 256), rng.integers(0, photo.shape[1] - 256)
                crop = photo[y:y + 256, x:x + 256].copy()
                half = np.asarray(Image.fromarray(crop[64:192, 64:192]).resize((64, 64), Image.Resampling.LANCZOS))
                crop[64:192, 64:192] = half.repeat(2, 0).repeat(2, 1)  # nearest x2, as SD's decoder upsamples
                mask = np.zeros((256, 256), np.uint8)
                mask[64:192, 64:192] = 1
                tokens = enc.tokens(_batch(enc, [crop]))[0].numpy()
                xs.append(tokens)
                ys.append(enc.token_mask(mask) > 0.5)
        data[part] = (np.concatenate(xs), np.concatenate(ys))
    probe = LogisticRegression(C=1.0, max_iter=3000).fit(*data["train"])
    accuracy = probe.score(*data["test"])
    print(f"token probe accuracy {accuracy:.3f}")
    assert accuracy >= 0.85, accuracy


def test_masks_follow_the_geometry_onto_the_grid():
    enc = load_encoder("spectrum:v2")
    mask = np.zeros((64, 64), np.uint8)
    mask[:32, :16] = 1  # a 64 px image is tiled 4 x 4 over the 256 px canvas: so is its mask
    cells = enc.token_mask(mask).reshape(16, 16)
    one_tile = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    assert np.allclose(cells, np.tile(one_tile, (4, 4)), atol=0.02)
    big = np.zeros((256, 256), np.uint8)
    big[:24, :] = 1
    assert np.allclose(enc.token_mask(big).reshape(16, 16)[:, 0], [1, 0.5] + [0] * 14, atol=0.02)
    assert np.allclose(grid_fractions(big, (16, 16)).numpy(), enc.token_mask(big), atol=0.02)
    clip = load_encoder(DEBUG_CLIP)  # resize to 32 px + center crop, then a 4 x 4 grid of 8 px patches
    assert clip.token_mask(np.ones((50, 70), np.uint8)).tolist() == [1.0] * 16


def test_open_clip_vit_patch_tokens_are_the_towers_own():
    import open_clip

    enc = load_encoder(DEBUG_CLIP)
    assert enc.token_grid == (4, 4) and enc.token_dim == 64
    batch = _batch(enc, [np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8) for i in range(2)])
    pooled, tokens = enc.features_and_tokens(batch)
    assert tokens.shape == (2, 16, 64) and torch.equal(pooled, enc(batch)) and torch.equal(tokens, enc.tokens(batch))
    visual = open_clip.create_model("GenDet-Debug-ViT", pretrained=None).visual.eval()
    visual.load_state_dict(enc.visual.state_dict())
    with torch.no_grad():  # the ViT's own steps: embed, transformer, ln_post; the tokens after the class token
        reference = visual.ln_post(visual.transformer(visual._embeds(batch)))[:, 1:]
    assert torch.allclose(tokens, reference, atol=1e-6)


def test_an_encoder_without_a_grid_says_so():
    class Pooled(Encoder):
        name = "pooled:only"

    with pytest.raises(GendetError, match="no token grid"):
        Pooled().tokens(torch.zeros(1, 3, 8, 8))
    with pytest.raises(GendetError, match="no token grid"):
        Pooled().token_mask(np.ones((8, 8)))


def test_coarsening_a_grid_pools_tokens_as_masks_are_pooled():
    tokens = torch.arange(16, dtype=torch.float32).reshape(1, 16, 1).repeat(1, 1, 2)  # a 4 x 4 grid
    coarse = coarsen(tokens, (4, 4), (2, 2))
    assert coarse.shape == (1, 4, 2) and coarse[0, :, 0].tolist() == [2.5, 4.5, 10.5, 12.5]
    mask = np.kron(np.arange(16, dtype=np.float32).reshape(4, 4), np.ones((2, 2), np.float32)) / 16
    assert torch.allclose(grid_fractions(mask, (2, 2))[0], coarse[0, :, 0] / 16)
    with pytest.raises(ValueError, match="do not fill"):
        coarsen(tokens, (3, 3), (2, 2))


def test_flat_patches_give_the_same_tokens_alone_and_in_a_batch():
    """A flat region's spectrum has no shape: its tokens are zeros, not rounding noise scaled up,
    so they do not move with the other images of the batch (gendet.encoders.tokens.standardise)."""
    import numpy as np
    import torch
    from PIL import Image

    from gendet.encoders.registry import load_encoder

    encoder = load_encoder("spectrum:v2")
    pre = encoder.preprocessor
    flat = Image.new("RGB", (96, 64), (30, 140, 200))
    rng = np.random.default_rng(0)
    others = [Image.fromarray(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)) for _ in range(3)]

    def tokens(images):
        return encoder.tokens(pre.finish(torch.from_numpy(np.stack([pre.pixels(i) for i in images]))))

    alone, batched = tokens([flat])[0], tokens([*others, flat])[-1]
    assert torch.allclose(alone, batched, atol=1e-5)
