"""Issue 10, cases 10 and 11: the dataset fingerprint reads only regular files; URIs cannot escape."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components import storage
from components.contracts.errors import StorageError
from tests.support.datasets import make_dataset


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "data", n_groups=3, per_group=1, size=16)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("entry", ["fifo", "dev_zero", "dangling", "loop"])
def test_fingerprint_skips_what_is_not_a_regular_file(dataset, entry):
    before = storage.fingerprint(dataset)
    odd = dataset / "chips" / "odd.png"
    match entry:
        case "fifo":
            os.mkfifo(odd)  # reading it would block forever
        case "dev_zero":
            odd.symlink_to("/dev/zero")  # reading it never ends
        case "dangling":
            odd.symlink_to(dataset / "nowhere.png")
        case "loop":
            odd.symlink_to(dataset / "chips" / "loop.png")
            (dataset / "chips" / "loop.png").symlink_to(odd)
    assert storage.fingerprint(dataset) == before


def test_fingerprint_follows_links_to_regular_files_and_sees_changes(dataset, tmp_path):
    before = storage.fingerprint(dataset)
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"not really a png")
    (dataset / "chips" / "linked.png").symlink_to(outside)
    linked = storage.fingerprint(dataset)
    assert linked != before
    outside.write_bytes(b"changed")
    assert storage.fingerprint(dataset) != linked


def test_fingerprint_takes_file_names_that_are_not_utf8(dataset):
    before = storage.fingerprint(dataset)
    (Path(os.fsdecode(bytes(dataset / "chips") + b"/caf\xe9.png"))).write_bytes(b"x")
    assert storage.fingerprint(dataset) != before


@pytest.mark.parametrize("uri", ["s3://bucket/../etc/", "s3://bucket/data/../../x", "s3://../x", "s3://b/./data"])
def test_dot_segments_in_s3_uris_are_refused(uri, tmp_path):
    with pytest.raises(StorageError, match="'..' segments are not allowed"):
        storage.parse_s3_uri(uri)
    cache = tmp_path / "cache"
    with pytest.raises(StorageError, match="segments are not allowed"):
        storage.materialize(uri, cache)  # refused before any client or download
    assert not cache.exists()
