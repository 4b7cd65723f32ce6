"""Contract tests every model-store backend passes (local directory and fsspec's memory filesystem)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
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
    stored = store.put(
        "digits", 1, str(model_file), {"run_id": "r1", "epoch": 4, "metric": "val_loss", "value": 0.05}
    )
    assert stored.sha256 == sha and stored.size_bytes == model_file.stat().st_size
    assert stored.metadata["run_id"] == "r1" and stored.metadata["version"] == 1
    assert store.versions("digits") == [1]
    copy = store.local_copy("digits", 1, str(tmp_path))
    assert hashlib.sha256(open(copy, "rb").read()).hexdigest() == sha


def test_a_local_version_is_readable_by_other_users(tmp_path, model_file):
    store = open_store(str(tmp_path / "model-store"))
    old_umask = os.umask(0o022)
    try:
        store.put("digits", 1, str(model_file), {})
    finally:
        os.umask(old_umask)
    version_dir = tmp_path / "model-store" / "digits" / "v1"
    assert oct(version_dir.stat().st_mode & 0o777) == "0o755"
    assert oct((version_dir / "model.keras").stat().st_mode & 0o777) == "0o644"


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


def test_a_checkpoint_that_cannot_be_read_is_not_blamed_on_the_store(store, tmp_path):
    not_a_file = tmp_path / "not-a-file"
    not_a_file.mkdir()
    with pytest.raises(StoreError, match=r"cannot read the checkpoint .*not-a-file: Is a directory"):
        store.put("digits", 1, str(not_a_file), {})
    assert store.versions("digits") == []


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


def test_only_old_leftovers_are_discarded_when_asked_for_an_age(store, model_file):
    import time

    for leftover in ("old", "new"):
        store.fs.makedirs(f"{store.root}/digits/.staging-{leftover}", exist_ok=True)
        with store.fs.open(f"{store.root}/digits/.staging-{leftover}/model.keras", "wb") as handle:
            handle.write(b"half")
    if store.local:  # a day-old leftover (memory:// stamps creation times it does not let us change)
        os.utime(f"{store.root}/digits/.staging-old", (time.time() - 86400, time.time() - 86400))
        assert store.discard_staging("digits", older_than_s=3600) == 1
        assert (
            store.discard_staging("digits", older_than_s=3600) == 0
        )  # the young one may be a copy in progress
    assert store.discard_staging("digits") == (1 if store.local else 2)
    store.put("digits", 1, str(model_file), {})
    assert store.names() == ["digits"] and store.discard_staging("digits", older_than_s=0) == 0


def test_bad_names_are_refused(store, model_file):
    for name in ("", "../escape", "a/b", "x" * 300):
        with pytest.raises(StoreError, match="invalid model name"):
            store.put(name, 1, str(model_file), {})


def test_a_failed_check_before_publishing_leaves_nothing(store, model_file):
    def refuse():
        raise RuntimeError("does not load")

    with pytest.raises(RuntimeError, match="does not load"):
        store.put("digits", 1, str(model_file), {}, check=refuse)
    assert store.versions("digits") == [] and store.get("digits", 1) is None
    assert store.discard_staging("digits") == 0
    assert store.put("digits", 1, str(model_file), {}, check=lambda: None).version == 1


# -- a local store that cannot take the model: real filesystems, no fakes ------------------------


def test_a_store_root_that_is_a_file_is_not_writable(tmp_path, model_file):
    root = tmp_path / "store-is-a-file"
    root.write_text("oops")
    with pytest.raises(StoreError, match="cannot write to the model store .*store-is-a-file"):
        open_store(str(root)).put("digits", 1, str(model_file), {})


def test_a_read_only_store_is_refused_with_what_to_do(tmp_path, model_file):
    root = tmp_path / "frozen"
    (root / "digits").mkdir(parents=True)
    # chattr +i binds even root (CI runs as root, so file modes would not).
    if subprocess.run(["chattr", "+i", str(root / "digits")], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this filesystem")
    try:
        with pytest.raises(
            StoreError, match=r"is not writable \(Operation not permitted\); check its permissions"
        ):
            open_store(str(root)).put("digits", 1, str(model_file), {})
    finally:
        subprocess.run(["chattr", "-i", str(root / "digits")], check=True)
    assert open_store(str(root)).versions("digits") == []


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs mounted for the test (needs root, as CI has)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_a_full_store_is_refused_before_copying(small_disk, model_file):
    store = open_store(str(small_disk / "store"))
    with pytest.raises(StoreError, match=r"is full: the model needs 1\.1 MB, .* is free"):
        store.put("digits", 1, str(model_file), {})
    assert store.versions("digits") == [] and store.discard_staging("digits") == 0


def test_running_out_of_space_mid_copy_is_refused_and_leaves_nothing(small_disk, model_file, monkeypatch):
    # The free-space check passes (it is told there is room); the disk then fills for real.
    import pipeline.store.fs as fs_module

    monkeypatch.setattr(fs_module, "SPACE_MARGIN_BYTES", 0)
    big = model_file.parent / "big.keras"
    big.write_bytes(os.urandom(3 << 20))
    (small_disk / "ballast").write_bytes(b"\0" * (2 << 20))
    real_usage = shutil.disk_usage
    monkeypatch.setattr(fs_module.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=10 << 20))
    store = open_store(str(small_disk / "store"))
    with pytest.raises(
        StoreError, match=r"is full \(No space left on device\) while writing a 3\.1 MB model"
    ):
        store.put("digits", 1, str(big), {})
    assert store.versions("digits") == [] and store.discard_staging("digits") == 0
