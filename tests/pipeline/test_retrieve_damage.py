"""A damaged shard is refused before the ledger charge: IndexCorruptError (exit 3) and nothing charged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index import IndexCorruptError, PrivateIndex
from pipeline import PrivateRetriever

SCOPE = {"k": 5, "q": 0.2, "sigma": 0.5, "epsilon": 50.0}


def _damage_header(path: Path) -> None:
    """Same size, broken header (sizes still match the manifest, so opening the index succeeds)."""
    data = path.read_bytes()
    path.write_bytes(b"\xde\xad\xbe\xef" * 16 + data[64:])


@pytest.mark.parametrize("name", ["index.faiss", "ids.npy", "embeddings.npy"])
def test_damaged_shard_is_refused_with_nothing_charged(
    encoder, two_shard_dir: Path, tmp_path: Path, make_ledger, name: str
) -> None:
    index = PrivateIndex.open(two_shard_dir)  # a per-test copy already  # size checks pass; the damaged file has not been read yet
    _damage_header(index.shard("high").path / name)
    ledger = make_ledger(low=SCOPE, high=SCOPE)
    retriever = PrivateRetriever(index, ledger, shards=["low", "high"])
    query = encoder.encode_text(["a handwritten digit 7"])[0]
    with pytest.raises(IndexCorruptError, match="checksum mismatch") as err:
        retriever.retrieve(query, _rng=np.random.default_rng(0))
    assert err.value.exit_code == 3 and "\n" not in str(err.value)
    assert ledger.history() == []
    assert [ledger.status(scope).queries_charged for scope in ("low", "high")] == [0, 0]
    # the intact shard alone still answers (and is charged)
    release = PrivateRetriever(index, ledger, shards=["low"]).retrieve(query)
    assert release.receipt.scopes == ("low",) and ledger.status("high").queries_charged == 0
