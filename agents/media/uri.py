"""Turn a user-supplied video URI into a safe, existing, regular local file.

Only local files are supported: a plain absolute path or a ``file:`` URI (``file:///abs/path``,
``file://localhost/abs/path``, ``file:/abs/path``; percent-escapes are decoded). Remote schemes are
rejected, never fetched.

Error codes (``IngestError.code``):

* ``ingest.bad_uri`` - empty, not a string, NUL bytes, relative path, query/fragment on a
  ``file:`` URI, no path;
* ``ingest.unsupported_scheme`` - any scheme but ``file`` (http, https, ftp, s3, data, ...) and
  ``file://otherhost/...``;
* ``ingest.outside_allowed_roots`` - the real path (symlinks and ``..`` resolved) is not inside
  one of ``roots``; checked before existence so nothing is revealed about files elsewhere;
* ``ingest.not_found``, ``ingest.not_a_file`` (directory, device, fifo, socket),
  ``ingest.unreadable`` (permission denied).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from framebus.topics.errors import IngestError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


def _fail(code: str, message: str) -> IngestError:
    return IngestError(message, code=code)


def _local_path(uri: str) -> str:
    m = _SCHEME.match(uri)
    if m is None:
        return uri
    scheme = m.group(1).lower()
    if scheme != "file":
        raise _fail(
            "ingest.unsupported_scheme", f"scheme {scheme!r} is not supported (only local files and file:// URIs)"
        )
    try:
        parts = urlsplit(uri)
    except ValueError as e:
        raise _fail("ingest.bad_uri", f"malformed file URI: {e}") from None
    if parts.query or parts.fragment or uri.endswith(("?", "#")):
        raise _fail("ingest.bad_uri", "a file URI may not carry a query or fragment")
    if parts.netloc not in ("", "localhost"):
        raise _fail(
            "ingest.unsupported_scheme",
            f"file URI names a remote host {parts.netloc!r}; remote files are not supported",
        )
    path = unquote(parts.path, errors="strict") if parts.path else ""
    if not path:
        raise _fail("ingest.bad_uri", "file URI without a path")
    return path


def resolve_uri(uri: str, roots: Iterable[os.PathLike | str] = ()) -> Path:
    """Validate ``uri`` and return the real (symlink-free, absolute) path of the file it names.

    ``roots``: allowed directories; the real path must lie inside one of them (after resolving
    symlinks on both sides). Empty = any absolute local path is allowed.
    Raises ``IngestError`` with one of the codes listed in the module docstring.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise _fail("ingest.bad_uri", "empty URI")
    if "\x00" in uri:
        raise _fail("ingest.bad_uri", "URI contains a NUL byte")
    try:
        raw = _local_path(uri)
    except UnicodeDecodeError:
        raise _fail("ingest.bad_uri", "file URI path is not valid UTF-8 after unquoting") from None
    if "\x00" in raw:
        raise _fail("ingest.bad_uri", "path contains a NUL byte")
    if not os.path.isabs(raw):
        raise _fail("ingest.bad_uri", f"path must be absolute: {raw!r}")
    try:
        real = Path(os.path.realpath(raw))
    except (OSError, ValueError) as e:  # symlink loops on some Pythons, odd bytes
        raise _fail("ingest.bad_uri", f"cannot resolve path: {e}") from None

    real_roots = [Path(os.path.realpath(os.fspath(r))) for r in roots]
    if real_roots and not any(real == r or real.is_relative_to(r) for r in real_roots):
        raise _fail("ingest.outside_allowed_roots", "path is outside the allowed ingest roots")

    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise _fail("ingest.not_found", f"no such file: {raw}") from None
    except PermissionError:
        raise _fail("ingest.unreadable", f"permission denied: {raw}") from None
    except OSError as e:  # ELOOP, ENOTDIR, ENAMETOOLONG ...
        raise _fail("ingest.not_found", f"cannot stat {raw}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _fail("ingest.not_a_file", f"not a regular file: {raw}")
    if not os.access(real, os.R_OK):
        raise _fail("ingest.unreadable", f"permission denied: {raw}")
    return real


def resolve_media_uri(uri: str, settings: Any, tenant: str) -> Path:
    """``resolve_uri`` against what a stage may read for ``tenant``: the allowed ingest roots, and the
    tenant's own generated videos (``<data_dir>/generated/<tenant>/``, what the generate agent ingests:
    the closed loop). Every stage that opens a file (ingest, decode) checks it here."""
    from framebus.agents.media.pipeline import safe_component

    generated = settings.generated_dir / safe_component(tenant)
    try:
        return resolve_uri(uri, settings.allowed_roots)
    except IngestError as err:
        if err.code != "ingest.outside_allowed_roots" or not generated.is_dir():
            raise
        return resolve_uri(uri, [generated])
