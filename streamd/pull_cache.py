"""What a downstream machine keeps between pulls: snapshot files by sha256, manifests by URL.

Files are content-addressed (``blobs/ab/abcdef...``), so a pull of a version whose files were seen
before, under any version name, copies them locally and downloads nothing; a cached file is
re-hashed before use, and one that no longer matches is dropped and fetched again. A manifest is
kept with its ETag, so polling ``latest`` costs one conditional request answered 304 while it has
not moved. The default folder is ``$STREAMD_CACHE_DIR``, else ``$XDG_CACHE_HOME/streamd`` or
``~/.cache/streamd``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from streamd.service.snapshots import sha256_file


def default_cache_dir() -> Path:
    if os.environ.get("STREAMD_CACHE_DIR"):
        return Path(os.environ["STREAMD_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "streamd"


class PullCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _blob(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    def copy_out(self, sha256: str, dest: Path) -> bool:
        """Copies the cached file with this digest to ``dest``; False when absent or no longer matching."""
        blob = self._blob(sha256)
        if not blob.is_file():
            return False
        if sha256_file(blob) != sha256:
            blob.unlink(missing_ok=True)
            return False
        shutil.copyfile(blob, dest)
        return True

    def keep(self, sha256: str, src: Path) -> None:
        """Adds a verified file (best effort: a cache that cannot be written only costs a download)."""
        blob = self._blob(sha256)
        try:
            blob.parent.mkdir(parents=True, exist_ok=True)
            self._replace(blob, lambda tmp: shutil.copyfile(src, tmp))
        except OSError:
            pass

    def manifest(self, url: str) -> tuple[str, dict] | None:
        """(ETag, manifest) last seen at ``url``."""
        try:
            entry = json.loads(self._manifest_path(url).read_text())
            return entry["etag"], entry["manifest"]
        except (OSError, ValueError, KeyError):
            return None

    def keep_manifest(self, url: str, etag: str, manifest: dict) -> None:
        path = self._manifest_path(url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"url": url, "etag": etag, "manifest": manifest})
            self._replace(path, lambda tmp: Path(tmp).write_text(text))
        except OSError:
            pass

    def _manifest_path(self, url: str) -> Path:
        return self.root / "manifests" / f"{hashlib.sha256(url.encode()).hexdigest()}.json"

    @staticmethod
    def _replace(path: Path, write) -> None:
        """Writes through a temp file beside ``path``: a concurrent reader sees all of it or nothing."""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
