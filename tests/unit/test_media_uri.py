"""framebus.agents.media.uri.resolve_uri: what may be ingested, and the stable codes of what may not."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from framebus.agents.media.uri import resolve_uri
from framebus.topics.errors import IngestError


@pytest.fixture
def tree(tmp_path: Path):
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    video = root / "sub" / "clip one.mp4"
    video.write_bytes(b"x")
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"s")
    return root, video, outside


def code_of(uri, roots=()):
    with pytest.raises(IngestError) as ei:
        resolve_uri(uri, roots)
    return ei.value.code


def test_plain_absolute_path(tree):
    root, video, _ = tree
    assert resolve_uri(str(video), [root]) == video.resolve()


def test_file_uris(tree):
    root, video, _ = tree
    quoted = str(video).replace(" ", "%20")
    for uri in (f"file://{quoted}", f"file:{quoted}", f"file://localhost{quoted}", f"FILE://{quoted}"):
        assert resolve_uri(uri, [root]) == video.resolve(), uri


def test_no_roots_allows_any_absolute_path(tree):
    _, _, outside = tree
    assert resolve_uri(str(outside), []) == outside.resolve()


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "   ",
        "relative/clip.mp4",
        "clip.mp4",
        "file://",
        "file:///a.mp4?x=1",
        "file:///a.mp4#frag",
        "/media/a\x00b.mp4",
        "file:///a%00b.mp4",
    ],
)
def test_bad_uri(uri):
    assert code_of(uri) == "ingest.bad_uri"


def test_not_a_string():
    assert code_of(None) == "ingest.bad_uri"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "uri",
    [
        "http://example.com/a.mp4",
        "https://example.com/a.mp4",
        "ftp://example.com/a.mp4",
        "data:video/mp4;base64,AAAA",
        "s3://bucket/a.mp4",
        "rtsp://cam/stream",
        "HTTPS://x/y.mp4",
        "file://otherhost/a.mp4",
    ],
)
def test_unsupported_scheme(uri):
    assert code_of(uri) == "ingest.unsupported_scheme"


def test_dotdot_traversal_is_caught(tree):
    root, _, outside = tree
    uri = str(root / "sub" / ".." / ".." / outside.name)
    assert os.path.exists(uri)  # the escape target is real
    assert code_of(uri, [root]) == "ingest.outside_allowed_roots"
    assert code_of("file://" + uri, [root]) == "ingest.outside_allowed_roots"
    # percent-encoded dots are decoded before resolving
    encoded = "file://" + str(root / "sub" / "%2e%2e" / "%2E%2E" / outside.name)
    assert code_of(encoded, [root]) == "ingest.outside_allowed_roots"


def test_dotdot_staying_inside_is_fine(tree):
    root, video, _ = tree
    assert resolve_uri(str(root / "sub" / ".." / "sub" / video.name), [root]) == video.resolve()


def test_symlink_escaping_the_root(tree):
    root, _, outside = tree
    link = root / "innocent.mp4"
    link.symlink_to(outside)
    assert code_of(str(link), [root]) == "ingest.outside_allowed_roots"
    dirlink = root / "evil_dir"
    dirlink.symlink_to(outside.parent)
    assert code_of(str(dirlink / outside.name), [root]) == "ingest.outside_allowed_roots"


def test_symlink_inside_the_root_resolves_to_its_target(tree):
    root, video, _ = tree
    link = root / "alias.mp4"
    link.symlink_to(video)
    assert resolve_uri(str(link), [root]) == video.resolve()


def test_root_given_through_a_symlink(tree, tmp_path):
    root, video, _ = tree
    root_link = tmp_path / "root_link"
    root_link.symlink_to(root)
    assert resolve_uri(str(video), [root_link]) == video.resolve()


def test_sibling_prefix_is_not_inside(tree, tmp_path):
    root, _, _ = tree
    sibling = tmp_path / "media2"
    sibling.mkdir()
    f = sibling / "a.mp4"
    f.write_bytes(b"x")
    assert code_of(str(f), [root]) == "ingest.outside_allowed_roots"


def test_outside_check_comes_before_existence(tree, tmp_path):
    root, _, _ = tree
    # nothing is revealed about files outside the roots
    assert code_of(str(tmp_path / "nope.mp4"), [root]) == "ingest.outside_allowed_roots"


def test_any_of_several_roots(tree, tmp_path):
    root, _, outside = tree
    assert resolve_uri(str(outside), [root, tmp_path]) == outside.resolve()


def test_not_found(tree):
    root, _, _ = tree
    assert code_of(str(root / "missing.mp4"), [root]) == "ingest.not_found"
    assert code_of(str(root / "sub" / "clip one.mp4" / "x"), [root]) == "ingest.not_found"


def test_not_a_file_directory_fifo_device_socket(tree):
    root, _, _ = tree
    assert code_of(str(root / "sub"), [root]) == "ingest.not_a_file"
    fifo = root / "pipe.mp4"
    os.mkfifo(fifo)
    assert code_of(str(fifo), [root]) == "ingest.not_a_file"
    assert code_of("/dev/null", []) == "ingest.not_a_file"
    sock_path = root / "s.sock"
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(sock_path))
        assert code_of(str(sock_path), [root]) == "ingest.not_a_file"
    finally:
        s.close()


def test_error_is_ingest_error_with_message(tree):
    root, _, _ = tree
    with pytest.raises(IngestError) as ei:
        resolve_uri("http://example.com/a.mp4", [root])
    assert ei.value.as_dict()["code"] == "ingest.unsupported_scheme"
    assert "http" in ei.value.message


def test_a_stage_reads_its_tenants_generated_videos_and_nothing_else_outside_the_roots(tmp_path):
    """Ingest and decode (which re-checks the path from an internal topic) both accept a generated video
    of the request's own tenant, and no other tenant's."""
    from framebus.agents.media.uri import resolve_media_uri
    from framebus.streams.config import Settings

    media = tmp_path / "media"
    media.mkdir()
    s = Settings(data_dir=tmp_path / "data", ingest_roots=[media])
    own = s.generated_dir / "acme" / "job.mp4"
    other = s.generated_dir / "globex" / "job.mp4"
    for f in (own, other):
        f.parent.mkdir(parents=True)
        f.write_bytes(b"x")
    assert resolve_media_uri(own.as_uri(), s, "acme") == own.resolve()
    for uri, tenant in ((other.as_uri(), "acme"), (own.as_uri(), "globex"), (str(tmp_path / "data"), "acme")):
        with pytest.raises(IngestError) as e:
            resolve_media_uri(uri, s, tenant)
        assert e.value.code == "ingest.outside_allowed_roots"
