"""Encoders: registry and names, the spectrum encoder's signal, open_clip loading paths.

open_clip runs on the tiny random ViT shipped as data (``GenDet-Debug-ViT``); real weights are
exercised up to the point where the file or the hub would be read.
"""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from gendet import GendetError
from gendet.encoders.base import canonical_json
from gendet.encoders.openclip import open_clip_preprocess_cfg
from gendet.encoders.registry import OFFLINE_DEFAULT, list_encoders, load_encoder, load_preprocess, parse_encoder_name
from gendet.encoders.spectrum import DIM, SIZE, V2_DIM

DEBUG_CLIP = "open_clip:GenDet-Debug-ViT/none"


def _photo(name: str) -> np.ndarray:
    """A photo that scikit-image ships (offline), as RGB uint8."""
    from pathlib import Path

    import skimage.data

    path = next(Path(skimage.data.__file__).parent.glob(f"{name}.*"))
    return np.asarray(Image.open(path).convert("RGB"))


def _noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------------ names

def test_parse_and_list_names():
    assert parse_encoder_name("spectrum:v1").name == "spectrum:v1"
    spec = parse_encoder_name("open_clip:ViT-L-14/openai")
    assert (spec.family, spec.arch, spec.pretrained) == ("open_clip", "ViT-L-14", "openai")
    names = list_encoders()
    assert {"spectrum:v1", "open_clip:ViT-L-14/openai", "open_clip:ViT-B-32/none", DEBUG_CLIP} <= set(names)


@pytest.mark.parametrize("bad, fragment", [
    ("resnet50", "not of the form"),
    ("spectrum:v9", "unknown encoder"),
    ("open_clip:NoSuchNet/openai", "no architecture 'NoSuchNet'"),
    ("open_clip:ViT-B-32/not-a-tag", "unknown pretrained tag 'not-a-tag'"),
    ("open_clip:ViT-B-32", "unknown pretrained tag ''"),
])
def test_unknown_names_raise_with_the_known_ones(bad, fragment):
    with pytest.raises(GendetError, match=fragment) as err:
        load_encoder(bad)
    message = str(err.value)
    assert "\n" not in message
    assert "spectrum:v1" in message or "choose one of" in message


def test_bad_precision_and_device():
    with pytest.raises(GendetError, match="precision"):
        load_encoder("spectrum:v1", precision="int8")
    with pytest.raises(GendetError, match="fp16 needs a GPU"):
        load_encoder(DEBUG_CLIP, precision="fp16")
    with pytest.raises(GendetError, match="no CUDA device"):
        load_encoder("spectrum:v1", device="cuda")
    with pytest.raises(GendetError, match="has no weights"):
        load_encoder("spectrum:v1", weights="/some/file.pt")


# ------------------------------------------------------------------------------------------ spectrum

def test_spectrum_interface_and_determinism():
    enc = load_encoder(OFFLINE_DEFAULT)
    assert enc.dim == DIM == 392 and enc.weights_ref == "none"
    big, small = _noise_image(300, 200, 1), _noise_image(40, 90, 2)
    x_big, x_small = enc.preprocess(big), enc.preprocess(small.convert("L"))  # grey is converted to RGB
    assert x_big.shape == x_small.shape == (3, SIZE, SIZE) and x_big.dtype == torch.float32
    # larger images are cropped, never resampled: the crop is the image's own pixels
    assert torch.equal(x_big, torch.from_numpy(np.array(big)[36:164, 86:214]).permute(2, 0, 1) / 255.0)
    batch = torch.stack([x_big, x_small])
    f1, f2 = enc(batch), enc(batch.clone())
    assert f1.shape == (2, 392) and f1.dtype == torch.float32 and torch.isfinite(f1).all()
    assert torch.equal(f1, f2)
    assert torch.allclose(enc(batch[:1]), f1[:1], atol=1e-5)  # no cross-talk inside a batch
    assert not torch.allclose(f1[0], f1[1])
    assert enc.preprocess_hash == hashlib.sha256(canonical_json(enc.preprocess_cfg).encode()).hexdigest()
    assert load_preprocess(OFFLINE_DEFAULT).preprocess_hash == enc.preprocess_hash


def _upsample_nearest(crop: np.ndarray, rng) -> np.ndarray:
    return crop.repeat(2, 0).repeat(2, 1)


def _upsample_transposed_conv(crop: np.ndarray, rng) -> np.ndarray:
    """A stride-2 transposed convolution with a random 3x3 kernel: the checkerboard of GAN decoders."""
    x = torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float() / 255.0
    kernel = torch.rand(3, 1, 3, 3, generator=torch.Generator().manual_seed(int(rng.integers(1 << 30))))
    kernel = kernel / kernel.sum((2, 3), keepdim=True) * 4  # stride 2 spreads each pixel over ~4 outputs
    y = torch.nn.functional.conv_transpose2d(x, kernel, stride=2, padding=1, output_padding=1, groups=3)
    return (y[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()


def test_spectrum_v2_takes_native_pixels_only_and_tiling_changes_nothing():
    enc = load_encoder("spectrum:v2")
    assert enc.dim == V2_DIM == 344 and "spectrum:v2" in list_encoders()
    assert enc.preprocess_hash != load_encoder(OFFLINE_DEFAULT).preprocess_hash
    # 300 x 200: the largest native crop that fits is 128 px; the canvas is that crop tiled 2 x 2
    image = _noise_image(300, 200, 1)
    pixels = enc.preprocessor.pixels(image)
    crop = np.asarray(image)[36:164, 86:214].transpose(2, 0, 1)
    assert pixels.shape == (3, 256, 256) and np.array_equal(pixels, np.tile(crop, (1, 2, 2)))
    # a 64 px image, and the same pixels tiled to 128 and 256 px, are one measurement
    small = np.asarray(_noise_image(64, 64, 2))
    images = [Image.fromarray(np.tile(small, (k, k, 1))) for k in (1, 2, 4)]
    features = enc(torch.stack([enc.preprocess(im) for im in images]))
    assert torch.isfinite(features).all() and torch.equal(features[0], features[1]) and torch.equal(features[0], features[2])
    assert not torch.allclose(features[0], enc(enc.preprocess(_noise_image(64, 64, 3))[None])[0])
    # only an image under 64 px is resampled (up, to 64)
    tiny = enc.preprocessor.pixels(_noise_image(40, 90, 4))
    assert tiny.shape == (3, 256, 256) and np.array_equal(tiny[:, :64, :64], tiny[:, 64:128, 64:128])


@pytest.mark.parametrize("name", [OFFLINE_DEFAULT, "spectrum:v2"])
def test_spectrum_separates_upsampled_from_natural_crops(name):
    """A linear probe on spectrum features tells generator-style upsampling from natural crops,
    on held-out photos (train on some photos, test on others); chance is 0.5."""
    from sklearn.linear_model import LogisticRegression

    enc, rng = load_encoder(name), np.random.default_rng(0)
    photos = {"train": ["astronaut", "coffee", "chelsea", "rocket"], "test": ["motorcycle_left", "ihc", "brick", "grass"]}
    features = {}
    for part, names in photos.items():
        images, labels = [], []
        for name in names:
            photo = _photo(name)
            for i in range(12):
                y, x = rng.integers(0, photo.shape[0] - SIZE), rng.integers(0, photo.shape[1] - SIZE)
                crop = photo[y:y + SIZE, x:x + SIZE]
                images.append(crop)
                labels.append(0)
                half = np.asarray(Image.fromarray(crop).resize((SIZE // 2, SIZE // 2), Image.Resampling.LANCZOS))
                images.append((_upsample_nearest if i % 2 else _upsample_transposed_conv)(half, rng))
                labels.append(1)
        batch = torch.stack([enc.preprocess(Image.fromarray(np.ascontiguousarray(im))) for im in images])
        features[part] = (enc(batch).numpy(), np.array(labels))
    probe = LogisticRegression(C=1.0, max_iter=2000).fit(*features["train"])
    accuracy = probe.score(*features["test"])
    print(f"probe accuracy {accuracy:.3f}")
    assert accuracy >= 0.8, accuracy


# ------------------------------------------------------------------------------------------ open_clip

def test_open_clip_random_init_interface():
    enc = load_encoder(DEBUG_CLIP)
    assert enc.dim == 64 and enc.weights_ref == "none" and enc.device == "cpu"
    cfg = enc.preprocess_cfg
    assert cfg["size"] == [32, 32] and cfg["interpolation"] == "bicubic" and cfg["crop"] == "center"
    assert cfg == open_clip_preprocess_cfg("GenDet-Debug-ViT", "none")
    assert load_preprocess(DEBUG_CLIP).preprocess_hash == enc.preprocess_hash
    x = torch.stack([enc.preprocess(_noise_image(50 + 10 * i, 40, i)) for i in range(3)])
    assert x.shape == (3, 3, 32, 32)
    out = enc(x)
    assert out.dtype == torch.float32 and out.shape == (3, 64)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(enc(x[1:2]), out[1:2], atol=1e-5)
    bf16 = load_encoder(DEBUG_CLIP, precision="bf16")
    assert bf16(x).dtype == torch.float32


def test_preprocessor_pickles_for_decode_workers():
    pre = load_preprocess(DEBUG_CLIP)
    image = _noise_image(64, 48, 3)
    again = pickle.loads(pickle.dumps(pre))  # our own bytes, made in this test
    assert torch.equal(again(image), pre(image)) and again.preprocess_hash == pre.preprocess_hash


@pytest.mark.parametrize("name", [DEBUG_CLIP, "open_clip:ViT-B-32/none", OFFLINE_DEFAULT])
def test_uint8_pixels_then_finish_equal_the_float_transform_bit_for_bit(name):
    """Decode workers ship ``pixels`` (uint8); encoders ``finish`` them: the features must not
    depend on that split, so it must equal the float transform exactly (open_clip's own Compose)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    pre = load_preprocess(name)
    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in pre.preprocess_cfg.items() if k != "crop"}
    images = [_noise_image(300, 200, 1), _noise_image(40, 90, 2).convert("L"), _noise_image(257, 129, 3).convert("RGBA")]
    for image in images:
        pixels = pre.pixels(image)
        assert pixels.dtype == np.uint8 and pixels.shape == (3, *pre.preprocess_cfg["size"])
        if name.startswith("open_clip"):
            reference = image_transform_v2(PreprocessCfg(**cfg), is_train=False)(image.convert("RGB"))
        else:  # spectrum:v1 as first defined: the crop's pixels as float32 / 255
            crop = np.asarray(image.convert("RGB"), dtype=np.float32)
            reference = None if min(crop.shape[:2]) < SIZE else torch.from_numpy(crop).permute(2, 0, 1)
            if reference is not None:
                top, left = (crop.shape[0] - SIZE) // 2, (crop.shape[1] - SIZE) // 2
                reference = reference[:, top : top + SIZE, left : left + SIZE].contiguous().div_(255.0)
        finished = pre.finish(torch.from_numpy(np.stack([pixels, pixels])))
        assert finished.dtype == torch.float32 and torch.equal(finished[0], finished[1])
        assert torch.equal(finished[0], pre(image))
        if reference is not None:
            assert torch.equal(finished[0], reference)


def test_preprocess_hash_follows_the_pretrained_tag():
    # the tag's mean/std/interpolation are part of the preprocessing, so they change the hash
    openai = open_clip_preprocess_cfg("ViT-B-16", "openai")
    laion = open_clip_preprocess_cfg("ViT-B-16-SigLIP", "webli")
    assert openai["size"] == [224, 224] and openai["mean"] != laion["mean"]


def _saved_debug_model(path) -> torch.Tensor:
    """Save a seeded debug CLIP's weights to ``path``; return its embedding of a fixed input."""
    import open_clip

    load_preprocess(DEBUG_CLIP)  # registers the shipped configs with open_clip
    torch.manual_seed(123)
    model = open_clip.create_model("GenDet-Debug-ViT", pretrained=None).eval()
    torch.save(model.state_dict(), path)
    with torch.no_grad():
        return torch.nn.functional.normalize(model.encode_image(torch.linspace(-1, 1, 3 * 32 * 32).view(1, 3, 32, 32)), dim=-1)


def test_weights_from_a_local_file_and_an_fsspec_url(tmp_path, monkeypatch):
    import fsspec

    expected = _saved_debug_model(tmp_path / "debug.pt")
    x = torch.linspace(-1, 1, 3 * 32 * 32).view(1, 3, 32, 32)
    local = load_encoder(DEBUG_CLIP, weights=str(tmp_path / "debug.pt"))
    assert local.weights_ref == str(tmp_path / "debug.pt")
    assert torch.allclose(local(x), expected, atol=1e-5)
    # a remote URL is copied into the cache first (memory:// stands in for s3:// or gs://)
    monkeypatch.setenv("GENDET_CACHE", str(tmp_path / "cache"))
    with fsspec.open("memory://bucket/debug.pt", "wb") as f:
        f.write((tmp_path / "debug.pt").read_bytes())
    remote = load_encoder(DEBUG_CLIP, weights="memory://bucket/debug.pt")
    assert remote.weights_ref == "memory://bucket/debug.pt"
    assert torch.allclose(remote(x), expected, atol=1e-5)
    assert list((tmp_path / "cache" / "weights").glob("*-debug.pt"))


def test_missing_or_bad_weights_name_the_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(GendetError, match=f"{missing}: weights file not found"):
        load_encoder(DEBUG_CLIP, weights=str(missing))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(GendetError, match="junk.pt: not a usable GenDet-Debug-ViT checkpoint"):
        load_encoder(DEBUG_CLIP, weights=str(junk))


def test_hub_weights_offline_tell_the_user_to_pass_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # conftest sets it too; the hub must not be reached
    with pytest.raises(GendetError, match="pass --weights PATH_OR_URL") as err:
        load_encoder("open_clip:ViT-B-32/openai")
    assert "open_clip:ViT-B-32/openai" in str(err.value) and "\n" not in str(err.value)


# --- the weights digest of the variant key ---------------------------------------------------------

def test_weights_the_name_fixes_have_fixed_keys():
    from gendet.encoders.registry import weights_identity

    assert weights_identity("spectrum:v1", None) == ("", "builtin")
    assert weights_identity(DEBUG_CLIP, "") == ("", "random-init")
    assert weights_identity("open_clip:ViT-B-32/openai", None) == ("", "open_clip-hub:ViT-B-32/openai")
    with pytest.raises(GendetError, match="has no weights"):
        weights_identity("spectrum:v1", "w.pt")


def test_a_small_local_file_is_known_by_its_bytes_a_large_one_by_its_storage_fingerprint(tmp_path, monkeypatch):
    import os

    from gendet.encoders import registry

    small = tmp_path / "small.pt"
    small.write_bytes(b"weights" * 100)
    ref, digest = registry.weights_identity(DEBUG_CLIP, str(small))
    assert ref == str(small) and digest == "sha256:" + hashlib.sha256(small.read_bytes()).hexdigest()
    os.utime(small, (1, 1))
    assert registry.weights_identity(DEBUG_CLIP, str(small))[1] == digest  # the bytes, not the time
    # a large file (a sparse 1.7 GB one here) is never read: size and mtime identify it
    large = tmp_path / "large.pt"
    with open(large, "wb") as f:
        f.truncate(1_700_000_000)
    first = registry.weights_identity(DEBUG_CLIP, str(large))[1]
    assert first.startswith("fingerprint:") and registry.weights_identity(DEBUG_CLIP, str(large))[1] == first
    os.utime(large, (12345, 12345))  # rewritten in place: another version
    assert registry.weights_identity(DEBUG_CLIP, str(large))[1] != first
    with pytest.raises(GendetError, match="weights file not found"):
        registry.weights_identity(DEBUG_CLIP, str(tmp_path / "missing.pt"))


def test_weights_on_s3_are_known_by_their_etag(moto_s3):
    import fsspec

    from gendet.encoders.registry import weights_identity

    url = f"s3://{moto_s3['bucket']}/encoders/w.pt"
    with fsspec.open(url, "wb") as f:
        f.write(b"a" * 1000)
    ref, digest = weights_identity(DEBUG_CLIP, url)
    assert ref == url and digest.startswith("fingerprint:") and weights_identity(DEBUG_CLIP, url)[1] == digest
    with fsspec.open(url, "wb") as f:  # the same size, other bytes: another ETag
        f.write(b"b" * 1000)
    fsspec.filesystem("s3").invalidate_cache()
    assert weights_identity(DEBUG_CLIP, url)[1] != digest
