"""Readers: every bad-file kind is skipped with a reason, odd modes are converted, ids are content hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import datasets
import numpy as np
import pytest
from index_corpora import bomb_png, noise_image, write_bad_and_odd_files
from PIL import Image

from index.errors import IndexInputError
from index.sources import Decoded, Skipped, content_id, decode_image, read_source


def _by_name(records: list[Decoded | Skipped]) -> dict[str, Decoded | Skipped]:
    return {Path(r.source).name: r for r in records}


def test_every_bad_file_is_skipped_with_a_reason_and_odd_modes_convert(tmp_path: Path) -> None:
    expected = write_bad_and_odd_files(tmp_path / "odd")
    got = _by_name(list(read_source(tmp_path / "odd", max_pixels=10_000)))
    assert set(got) == set(expected)
    for name, outcome in expected.items():
        rec = got[name]
        if outcome == "ok":
            assert isinstance(rec, Decoded), (name, rec)
            assert rec.image.mode == "RGB" and rec.image.size == (24, 24)
        else:
            assert isinstance(rec, Skipped), name
            assert outcome in rec.reason and "\n" not in rec.reason


def test_conversions_keep_the_picture(tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    write_bad_and_odd_files(folder)
    got = _by_name(list(read_source(folder, max_pixels=10_000)))
    gif = np.asarray(got["anim.gif"].image)
    assert tuple(gif[0, 0]) == (255, 0, 0)  # first frame, not the blue second frame
    gray16 = np.asarray(got["gray16.png"].image)
    assert gray16.max() > 200 and gray16.min() == 0  # 16-bit range rescaled, not clipped to white
    palette = np.asarray(got["palette.png"].image)
    assert palette.shape == (24, 24, 3)
    alpha = np.asarray(got["alpha.png"].image).astype(int)
    source = np.asarray(noise_image(905)).astype(int)
    assert np.abs(alpha - (source * 128 + 255 * 127) // 255).max() <= 2  # composited on white
    assert got["photo.webp"].id == content_id(noise_image(906))  # lossless webp: same pixels, same id
    assert got["photo.bmp"].id == content_id(noise_image(907))


def test_content_id_is_stable_non_negative_and_format_independent(tmp_path: Path) -> None:
    image = noise_image(1)
    image.save(tmp_path / "a.png")
    image.save(tmp_path / "b.bmp")
    a = decode_image(tmp_path / "a.png", "a")
    b = decode_image(tmp_path / "b.bmp", "b")
    assert isinstance(a, Decoded) and isinstance(b, Decoded)
    assert a.id == b.id == content_id(image)
    assert 0 <= a.id < 2**63
    assert content_id(noise_image(2)) != a.id
    digest = hashlib.sha256(b"dprdm-rgb8:24:24:" + image.tobytes()).digest()
    assert a.id == int.from_bytes(digest[:8], "big") & (2**63 - 1)  # the documented id format


def test_pillow_bomb_guard_without_our_cap(tmp_path: Path) -> None:
    rec = decode_image(bomb_png(40000, 40000), "bomb")
    assert isinstance(rec, Skipped) and "too large" in rec.reason


def _dataset(n: int) -> datasets.Dataset:
    images = [noise_image(100 + i) for i in range(n)]
    features = datasets.Features({"picture": datasets.Image(), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"picture": images, "label": list(range(n))}, features=features)


def test_save_to_disk_and_parquet_corpora(tmp_path: Path) -> None:
    ds = _dataset(5)
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "corpus.parquet"))
    want = [content_id(noise_image(100 + i)) for i in range(5)]
    saved = list(read_source(tmp_path / "saved"))
    parquet = list(read_source(tmp_path / "corpus.parquet"))
    assert [r.id for r in saved] == want
    assert [r.id for r in parquet] == want
    assert saved[2].source == f"{tmp_path / 'saved'}#[2]"


def test_image_column_option_and_bytes_columns(tmp_path: Path) -> None:
    import io

    def png_bytes(i: int) -> bytes:
        buf = io.BytesIO()
        noise_image(200 + i).save(buf, format="PNG")
        return buf.getvalue()

    ds = datasets.Dataset.from_dict(
        {"raw": [png_bytes(0), b"garbage", png_bytes(1)], "caption": ["a", "b", "c"]}
    )
    ds.to_parquet(str(tmp_path / "raw.parquet"))
    with pytest.raises(IndexInputError, match="--image-column"):
        list(read_source(tmp_path / "raw.parquet"))
    with pytest.raises(IndexInputError, match="not a column"):
        list(read_source(tmp_path / "raw.parquet", image_column="nope"))
    got = list(read_source(tmp_path / "raw.parquet", image_column="raw"))
    assert isinstance(got[0], Decoded) and isinstance(got[1], Skipped) and isinstance(got[2], Decoded)
    assert got[0].id == content_id(noise_image(200))


def test_missing_and_unsupported_sources(tmp_path: Path) -> None:
    with pytest.raises(IndexInputError, match="does not exist"):
        read_source(tmp_path / "missing")
    (tmp_path / "one.png").write_bytes(b"")
    with pytest.raises(IndexInputError, match="single file"):
        read_source(tmp_path / "one.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    with pytest.raises(IndexInputError, match="image folder"):
        read_source(tmp_path, image_column="image")
