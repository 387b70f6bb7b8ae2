from __future__ import annotations

import json
import os
import stat

import pytest

from airflow_provider_flux2.storage import BatchLocation, LocalPublisher
from airflow_provider_flux2.storage.base import content_hash
from airflow_provider_flux2.storage.local import META_DIR, current_umask, path_of, sidecar_of

LOCATION = BatchLocation("dag", "run_1", "publish")
PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 100


@pytest.fixture
def publisher(tmp_path):
    return LocalPublisher(tmp_path.as_uri())


def test_an_image_is_stored_under_its_key_with_content_type_and_metadata(publisher, tmp_path):
    uri = publisher.put_image(LOCATION, 3, PNG, "image/png", {"seed": "42", "Model": "flux-2-pro"})

    assert uri == f"{tmp_path.as_uri()}/dag/run_1/publish/00003-{content_hash(PNG)[:12]}.png"
    assert publisher.get(uri) == PNG
    assert publisher.exists(uri)
    info = publisher.head(uri)
    assert (info.size, info.content_type) == (len(PNG), "image/png")
    assert publisher.metadata(uri) == {"seed": "42", "model": "flux-2-pro"}


def test_metadata_lives_in_a_hidden_folder_so_the_batch_folder_lists_only_what_people_open(publisher, tmp_path):
    publisher.put_image(LOCATION, 0, PNG, "image/png", {"seed": "1"})
    publisher.put_named(LOCATION, "manifest.json", b"{}", "application/json")

    folder = tmp_path / "dag" / "run_1" / "publish"
    visible = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert visible == [f"00000-{content_hash(PNG)[:12]}.png", "manifest.json"]
    sidecar = json.loads((folder / META_DIR / "manifest.json.json").read_text())
    assert sidecar == {"content_type": "application/json", "metadata": {}}


def test_a_rerun_overwrites_the_same_key_instead_of_duplicating(publisher, tmp_path):
    first = publisher.put_image(LOCATION, 0, PNG, "image/png", {"attempt": "1"})
    second = publisher.put_image(LOCATION, 0, PNG, "image/png", {"attempt": "2"})

    assert first == second
    files = [p for p in (tmp_path / "dag").rglob("*") if p.is_file() and META_DIR not in p.parts]
    assert len(files) == 1
    assert publisher.metadata(second) == {"attempt": "2"}


def test_different_bytes_for_the_same_index_get_a_different_key(publisher):
    assert publisher.put_image(LOCATION, 0, PNG, "image/png") != publisher.put_image(
        LOCATION, 0, PNG + b"!", "image/png"
    )


def test_a_file_is_streamed_in_and_keyed_by_its_content(publisher, tmp_path):
    source = tmp_path / "big.png"
    source.write_bytes(PNG * 1000)

    uri = publisher.put_image(LOCATION, 1, source, "image/png")

    assert content_hash(PNG * 1000)[:12] in uri
    assert publisher.get(uri) == PNG * 1000


def test_missing_objects_raise_file_not_found_and_do_not_exist(publisher, tmp_path):
    uri = f"{tmp_path.as_uri()}/nothing.png"

    assert not publisher.exists(uri)
    with pytest.raises(FileNotFoundError):
        publisher.get(uri)
    with pytest.raises(FileNotFoundError):
        publisher.head(uri)


def test_a_file_written_by_something_else_has_its_type_guessed(publisher, tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"jpeg")

    info = publisher.head(f"{tmp_path.as_uri()}/photo.jpg")

    assert (info.content_type, info.metadata) == ("image/jpeg", {})


def test_no_temp_files_are_left_behind(publisher, tmp_path):
    publisher.put_image(LOCATION, 0, PNG, "image/png")

    assert not [p for p in tmp_path.rglob(".*.png.*") if p.is_file()]


def test_a_plain_path_is_accepted_as_base(tmp_path):
    publisher = LocalPublisher(str(tmp_path))

    uri = publisher.put_named(LOCATION, "a.txt", b"x", "text/plain")

    assert uri.startswith("file://")
    assert path_of(uri).read_bytes() == b"x"


def test_path_of_refuses_other_schemes():
    with pytest.raises(ValueError, match="not a file:// URI"):
        path_of("s3://bucket/key")


@pytest.fixture
def umask():
    """Set the process umask for one test and put the previous one back."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def test_published_files_are_readable_by_others_under_the_default_umask(publisher, umask):
    umask(0o022)

    uri = publisher.put_image(LOCATION, 0, b"img", "image/png", {"seed": "1"})
    path = path_of(uri)

    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(sidecar_of(path).stat().st_mode) == 0o644
    assert current_umask() == 0o022


def test_published_files_follow_a_stricter_umask(publisher, umask):
    umask(0o027)

    uri = publisher.put_named(LOCATION, "index.html", b"<html>", "text/html")

    assert stat.S_IMODE(path_of(uri).stat().st_mode) == 0o640


def test_a_file_copied_in_gets_the_published_mode_too_and_the_write_stays_atomic(publisher, umask, tmp_path):
    umask(0o002)
    source = tmp_path / "source.png"
    source.write_bytes(b"x" * 1000)
    source.chmod(0o600)

    uri = publisher.put_image(LOCATION, 1, source, "image/png")

    assert stat.S_IMODE(path_of(uri).stat().st_mode) == 0o664
    assert [p.name for p in path_of(uri).parent.iterdir() if p.name.startswith(".") and p.name != META_DIR] == []


def test_a_failed_write_that_is_not_a_full_volume_keeps_its_own_error_and_leaves_no_temp_file(publisher, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"gone\.png"):
        publisher.put_image(LOCATION, 0, tmp_path / "gone.png", "image/png", digest="0" * 64)

    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]
    assert not [p for p in tmp_path.rglob("*.png") if p.is_file()]
