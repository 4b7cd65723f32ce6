"""Contract tests every model-store backend passes (local directory and fsspec's memory filesystem)."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from pipeline.store import StoreError, open_store


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path / "model-store"))
    return open_store(f"memory://fitstream-test-{uuid.uuid4().hex}")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "best.keras"
    path.write_bytes(b"keras-zip-bytes" * 70_000)  # ~1 MB: several copy chunks
    return path


def test_put_hashes_while_copying_and_records_metadata(store, model_file, tmp_path):
    sha = hashlib.sha256(model_file.read_bytes()).hexdigest()
    stored = store.put("digits", 1, str(model_file), {"run_id": "r1", "epoch": 4, "metric": "val_loss", "value": 0.05})
    assert stored.sha256 == sha and stored.size_bytes == model_file.stat().st_size
    assert stored.metadata["run_id"] == "r1" and stored.metadata["version"] == 1
    assert store.versions("digits") == [1]
    copy = store.local_copy("digits", 1, str(tmp_path))
    assert hashlib.sha256(open(copy, "rb").read()).hexdigest() == sha


def test_put_is_idempotent_and_versions_are_immutable(store, model_file, tmp_path):
    first = store.put("digits", 1, str(model_file), {"run_id": "r1"})
    again = store.put("digits", 1, str(model_file), {"run_id": "r1"})
    assert again == first
    other = tmp_path / "other.keras"
    other.write_bytes(b"different")
    with pytest.raises(StoreError, match="already exists with other content"):
        store.put("digits", 1, str(other), {"run_id": "r2"})
    assert store.get("digits", 1).sha256 == first.sha256


def test_checksum_mismatch_and_missing_file_are_refused_and_leave_nothing(store, model_file):
    with pytest.raises(StoreError, match="checksum mismatch"):
        store.put("digits", 2, str(model_file), {}, expected_sha256="0" * 64)
    with pytest.raises(StoreError, match="checkpoint file not found"):
        store.put("digits", 3, str(model_file) + ".missing", {})
    assert store.versions("digits") == [] and store.get("digits", 2) is None
    assert store.discard_staging("digits") == 0  # no partial copy left behind


def test_an_interrupted_copy_is_invisible_and_cleaned(store, model_file):
    # What a crash mid-copy leaves: a staging folder with a partial file and no metadata.
    staging = f"{store.root}/digits/.staging-crashed"
    store.fs.makedirs(staging, exist_ok=True)
    with store.fs.open(f"{staging}/model.keras", "wb") as handle:
        handle.write(b"half")
    assert store.versions("digits") == []
    assert store.discard_staging("digits") == 1
    store.put("digits", 1, str(model_file), {})
    assert store.versions("digits") == [1]


def test_bad_names_are_refused(store, model_file):
    for name in ("", "../escape", "a/b", "x" * 300):
        with pytest.raises(StoreError, match="invalid model name"):
            store.put(name, 1, str(model_file), {})
