"""Builders of real WebDataset shards for the extraction tests: good ones (``gendet.data.shards``) and
one holding every kind of bad sample, written as raw tar members since ``ShardWriter`` refuses
bad samples by design. Each builder returns what the extraction must make of its shard.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib

import numpy as np
from PIL import Image

from gendet.data.shards import Sample, ShardWriter


def image_bytes(seed: int, size: tuple[int, int] = (48, 40), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    """A small real image with seeded noise, in any PIL mode."""
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode)
        if mode == "P":
            img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).quantize(16)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (over PIL's MAX_IMAGE_PIXELS)."""
    png = image_bytes(0, (8, 8), mode="L")
    ihdr = bytearray(png[16:29])  # IHDR data: width, height, depth, colour type, ...
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return png[:16] + bytes(ihdr) + crc + png[33:]


def corrupt_png() -> bytes:
    """A PNG with a valid header and a scrambled compressed stream (decoding fails mid-way)."""
    png = bytearray(image_bytes(9, (64, 64)))
    start = png.index(b"IDAT") + 4 + 16  # keep the zlib header and the first bytes
    png[start : start + 400] = bytes((b * 7 + 13) % 256 for b in png[start : start + 400])
    return bytes(png)


def meta(label: str = "real", subset: str = "sd", **extra) -> bytes:
    return json.dumps({"label": label, "subset": subset, **extra}).encode()


def raw_tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_good_shards(out_dir: str, prefix: str = "good", n_shards: int = 2, per_shard: int = 6,
                      size: tuple[int, int] = (48, 40)) -> list[dict]:
    """``n_shards`` valid shards; returns the samples' (key, label, subset) in shard order."""
    rows = []
    with ShardWriter(out_dir, prefix, max_count=per_shard) as writer:
        for i in range(n_shards * per_shard):
            label = "fake" if i % 2 else "real"
            sample = Sample(key=f"{prefix}_{i:04d}", image=image_bytes(i, size), image_ext="png", label=label,
                            subset="sd" if i % 3 else "mj", content_id=f"c{i // 2}", split="train")
            writer.write(sample)
            rows.append({"key": sample.key, "label": label, "subset": sample.subset, "content_id": f"c{i // 2}"})
    return rows


def write_bad_shard(path: str) -> dict[str, str]:
    """One shard with every kind of bad sample; returns key -> expected reason ('' = kept)."""
    good = image_bytes(1)
    jpeg = image_bytes(2, fmt="JPEG")
    members, expected = [], {}

    def add(key: str, reason: str, *parts: tuple[str, bytes]) -> None:
        members.extend((f"{key}.{ext}", data) for ext, data in parts)
        expected[key] = reason

    add("ok_rgb", "", ("png", good), ("json", meta()))
    add("ok_gray", "", ("png", image_bytes(3, mode="L")), ("json", meta("fake")))
    add("ok_cmyk", "", ("jpg", image_bytes(4, mode="CMYK", fmt="JPEG")), ("json", meta()))
    add("ok_rgba", "", ("png", image_bytes(5, mode="RGBA")), ("json", meta("fake")))
    add("ok_16bit", "", ("png", image_bytes(6, mode="I;16")), ("json", meta()))
    add("ok_palette", "", ("png", image_bytes(7, mode="P")), ("json", meta("fake")))
    add("zero_bytes", "empty_image", ("jpg", b""), ("json", meta()))
    add("truncated", "truncated_image", ("jpg", jpeg[: len(jpeg) // 2]), ("json", meta()))
    add("corrupt", "corrupt_image", ("png", corrupt_png()), ("json", meta()))
    add("text_as_jpg", "not_an_image", ("jpg", b"this is not an image at all\n" * 4), ("json", meta()))
    add("only_text", "no_image", ("txt", b"hello"), ("json", meta()))
    add("no_json", "missing_json", ("png", good))
    add("bad_json", "invalid_json", ("png", good), ("json", b"{not json"))
    add("no_label", "missing_label", ("png", good), ("json", json.dumps({"subset": "sd"}).encode()))
    add("odd_label", "unknown_label", ("png", good), ("json", meta("maybe")))
    add("no_subset", "missing_subset", ("png", good), ("json", json.dumps({"label": "real"}).encode()))
    add("bomb", "decompression_bomb", ("png", bomb_png()), ("json", meta()))
    add("../escape", "unsafe_key", ("png", good), ("json", meta()))  # a key that would leave its folder
    add("/etc/abs", "unsafe_key", ("png", good), ("json", meta()))
    add("ok_last", "", ("webp", image_bytes(8, fmt="WEBP")), ("json", meta("fake", "mj")))
    with open(path, "wb") as f:
        f.write(raw_tar(members))
    return expected


def write_truncated_shard(path: str, n_samples: int = 6) -> int:
    """A valid shard cut off mid-way (a failed copy); returns its full sample count."""
    data = raw_tar([m for i in range(n_samples) for m in ((f"s{i}.png", image_bytes(i)), (f"s{i}.json", meta()))])
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * 0.6)])
    return n_samples


def huge_header_jpeg(width: int = 12000, height: int = 7000) -> bytes:
    """A small JPEG whose SOF header claims width x height (84 MP): refused from its header."""
    data = bytearray(image_bytes(11, (16, 16), fmt="JPEG"))
    sof = next(i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def mutations(data: bytes, n: int, seed: int) -> list[bytes]:
    """``n`` copies of ``data`` with a few random bytes flipped, cut or repeated (seeded)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 8))):
            i = int(rng.integers(0, len(b)))
            b[i] = int(rng.integers(0, 256))
        if rng.random() < 0.2:
            b = b[: int(rng.integers(len(b) // 2, len(b)))]
        if rng.random() < 0.2:
            i = int(rng.integers(0, len(b)))
            b[i:i] = b[i:i + int(rng.integers(1, 64))] * int(rng.integers(2, 40))
        out.append(bytes(b))
    return out


ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")


def write_hostile_shard(path: str, *, per_format: int = 20, seed: int = 0) -> dict[str, str]:
    """Good samples between hostile ones: json nested 200k deep, a 5,000-digit number, NaN, a
    header claiming 84 MP, formats PIL reads but gendet does not open (inside a ``.png`` member), and
    ``per_format`` random mutations of an image of every allowed format. Returns key -> expected
    reason for the named ones ('' = kept); the mutations (keys ``mut_*``) may go either way."""
    members, expected = [], {}

    def add(key: str, reason: str | None, *parts: tuple[str, bytes]) -> None:
        members.extend((f"{key}.{ext}", data) for ext, data in parts)
        if reason is not None:
            expected[key] = reason

    add("good_0", "", ("png", image_bytes(20)), ("json", meta()))
    add("deep_json", "invalid_json", ("png", image_bytes(21)), ("json", b"[" * 200_000 + b"]" * 200_000))
    add("good_1", "", ("png", image_bytes(22)), ("json", meta("fake")))
    add("huge_int", "invalid_json", ("png", image_bytes(23)), ("json", b'{"label": "real", "subset": "sd", "n": '
                                                                        + b"9" * 5000 + b"}"))
    add("nan_json", "invalid_json", ("png", image_bytes(24)), ("json", b'{"label": "real", "subset": "sd", "x": NaN}'))
    add("claims_84mp", "too_large", ("jpg", huge_header_jpeg()), ("json", meta()))
    for fmt in ("TGA", "PPM", "ICO"):  # PIL reads them by content; gendet opens only ALLOWED_FORMATS
        add(f"as_{fmt.lower()}", "not_an_image", ("png", image_bytes(25, (16, 16), fmt=fmt)), ("json", meta()))
    add("good_2", "", ("jpg", image_bytes(26, fmt="JPEG")), ("json", meta("fake")))
    for f, fmt in enumerate(ALLOWED_FORMATS):
        source = image_bytes(30 + f, (24, 20), mode="P" if fmt == "GIF" else "RGB", fmt=fmt)
        for i, data in enumerate(mutations(source, per_format, seed * 100 + f)):
            add(f"mut_{fmt.lower()}_{i:03d}", None, ("png", data), ("json", meta()))
    add("good_last", "", ("webp", image_bytes(27, fmt="WEBP")), ("json", meta("fake", "mj")))
    with open(path, "wb") as f:
        f.write(raw_tar(members))
    return expected
