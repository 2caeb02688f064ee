"""Pulling snapshots and loading them as plain torch modules.

``load_encoder`` returns the torchvision module itself (a ``ResNet`` with ``fc = Identity``, or a
``VisionTransformer`` with ``heads = Identity``) holding the snapshot's weights under torchvision's
own keys, so fine-tuning code needs nothing from streamd. Every file is checked against the sha256
in the manifest; weights come from safetensors and metadata from JSON, so nothing is unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import safetensors.torch
from torch import nn

from streamd.pull_cache import PullCache, default_cache_dir
from streamd.models.encoders import EncoderSpec, build_encoder, module_from_architecture
from streamd.errors import (AuthError, IntegrityError, LocalIOError, NotFoundError, UnreachableError, UsageError,
                            os_error_text)
from streamd.service.snapshots import (ALIAS_RE, CONFIG, LATEST, MANIFEST, MODEL, VERSION_RE, list_versions, read_manifest,
                               resolve_version, sha256_file)

TOKEN_ENV = "STREAMD_API__TOKEN"
ATTEMPTS, BACKOFF_SECONDS = 4, 0.5
RETRY_STATUS = {429, 502, 503, 504}   # a busy or restarting server: worth another try
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a plain name: no folders, no '..', no hidden files


class SnapshotIntegrityError(IntegrityError):
    """A snapshot file is missing or differs from its sha256, or the manifest names unsafe files."""


def _is_url(source: str | Path) -> bool:
    return str(source).startswith(("http://", "https://"))


def check_manifest(manifest: dict, where: str) -> None:
    """A manifest (possibly from a remote server) must name the two files and only plain file names."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise SnapshotIntegrityError(f"{where} gave no snapshot manifest (no files and sha256 digests)")
    for name in (MODEL, CONFIG):
        if name not in files:
            raise SnapshotIntegrityError(f"manifest of {where} lists no sha256 for {name}")
    bad = [n for n in files if not FILE_NAME_RE.match(n) or n == MANIFEST]
    if bad or not VERSION_RE.match(str(manifest.get("name", ""))):
        raise SnapshotIntegrityError(f"manifest of {where} has an invalid version or file names: {bad}")


def verify(folder: Path, manifest: dict) -> None:
    """Raises SnapshotIntegrityError naming the first file that is missing or does not match."""
    check_manifest(manifest, str(folder))
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise SnapshotIntegrityError(f"{name} is missing from snapshot {folder}")
        actual = sha256_file(path)
        if actual != expected:
            raise SnapshotIntegrityError(
                f"sha256 mismatch for {name} in snapshot {folder}: manifest says {expected}, file has {actual}")


def local_snapshot(source: str | Path, version: str = LATEST) -> Path:
    """A snapshot folder itself, or the root holding ``vNNNNNN/`` folders and ``latest``."""
    source = Path(source)
    if (source / MANIFEST).is_file():
        return source
    if not source.is_dir():
        raise NotFoundError(f"no snapshot folder {source}")
    name = resolve_version(source, version)
    if name is not None:
        return source / name
    have = list_versions(source)
    if not have:
        raise NotFoundError(f"{source} is not a snapshot store: no {MANIFEST} and no vNNNNNN/ snapshot folders")
    raise NotFoundError(f"no snapshot {version} under {source} (it has {have[0]} to {have[-1]})")


def local_manifest(folder: Path) -> dict:
    """The manifest of a local snapshot folder; unreadable JSON is an integrity failure, not a crash."""
    try:
        return read_manifest(folder)
    except ValueError as e:
        raise SnapshotIntegrityError(f"{folder / MANIFEST} is not valid JSON: {e}") from e


def pull(source: str | Path, version: str = LATEST, out_dir: str | Path = "snapshot",
         token: str | None = None, timeout: float = 60.0, cache_dir: Path | None | bool = True) -> Path:
    """Copies one verified snapshot into ``out_dir`` and returns it. From a URL, files already in the
    pull cache are not downloaded again (``cache_dir``: True = the default folder, a path, or False)."""
    if not VERSION_RE.match(version) and not ALIAS_RE.match(version):
        raise UsageError(f"a snapshot version is vNNNNNN or an alias such as {LATEST}, not {version!r}")
    out = Path(out_dir)
    if _is_url(source):
        cache = PullCache(default_cache_dir() if cache_dir is True else cache_dir) if cache_dir else None
        _download(str(source).rstrip("/"), version, out, token or os.environ.get(TOKEN_ENV), timeout, cache)
    else:
        folder = local_snapshot(source, version)
        manifest = local_manifest(folder)
        verify(folder, manifest)
        with _writing_into(out):
            for name in [*manifest["files"], MANIFEST]:
                (out / name).write_bytes((folder / name).read_bytes())
    return out


@contextmanager
def _writing_into(out: Path) -> Iterator[None]:
    """Creates ``out``; an OSError while creating or filling it is an output folder the user must fix."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        yield
    except OSError as e:
        raise LocalIOError(f"cannot write the snapshot into {out}: {os_error_text(e)}") from e


def _download(base: str, version: str, out: Path, token: str | None, timeout: float,
              cache: PullCache | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=timeout) as http:
            manifest = _fetch_manifest(http, base, version, token, cache)
            check_manifest(manifest, base)  # its names become local paths and URLs below
            concrete = manifest["name"]  # pin the files to the version the manifest came from
            with _writing_into(out):
                for name, expected in manifest["files"].items():
                    if cache is not None and cache.copy_out(expected, out / name):
                        continue
                    _download_file(http, base, concrete, name, expected, out, token)
                    if cache is not None:
                        cache.keep(expected, out / name)
                (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    except httpx.TransportError as e:  # refused, DNS, timeout, connection dropped (after the retries)
        reason = re.sub(r"^\[Errno -?\d+\] ", "", str(e)) or type(e).__name__
        raise UnreachableError(f"cannot reach {base}: {reason}") from e
    except httpx.InvalidURL as e:
        raise UsageError(f"invalid server URL {base}: {e}") from e


def _attempts() -> Iterator[bool]:
    """Yields once per attempt whether it is the last, sleeping 0.5 s, 1 s, 2 s... before each retry."""
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
        yield attempt == ATTEMPTS - 1


def _fetch_manifest(http: httpx.Client, base: str, version: str, token: str | None, cache: PullCache | None) -> dict:
    """The manifest, by a conditional request when a cached copy has an ETag (304: nothing is sent)."""
    url = f"{base}/v1/snapshots/{version}"
    cached = cache.manifest(url) if cache is not None else None
    conditional = {"If-None-Match": cached[0]} if cached else {}
    for last in _attempts():
        try:
            response = http.get(f"/v1/snapshots/{version}", headers=conditional)
        except httpx.TransportError:
            if last:
                raise
            continue
        if response.status_code not in RETRY_STATUS or last:
            break
    if response.status_code == 304 and cached:
        return cached[1]
    _check_status(response, base, version, token)
    try:
        manifest = response.json()
    except ValueError:
        raise SnapshotIntegrityError(f"{base} answered {response.url.path} with no JSON manifest") from None
    if cache is not None and response.headers.get("etag"):
        cache.keep_manifest(url, response.headers["etag"], manifest)
    return manifest


def call_api(base: str, method: str, path: str, token: str | None, timeout: float = 60.0,
             body: dict | None = None) -> dict:
    """One JSON request to a daemon's API (the alias commands), failures mapped as for pulls."""
    base = base.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, base + path, headers=headers, json=body, timeout=timeout)
    except httpx.TransportError as e:
        reason = re.sub(r"^\[Errno -?\d+\] ", "", str(e)) or type(e).__name__
        raise UnreachableError(f"cannot reach {base}: {reason}") from e
    detail = _detail(response)
    if response.status_code == 404 and detail:
        raise NotFoundError(f"{base}: {detail}")
    if response.status_code == 403 and detail:
        raise AuthError(f"{base}: {detail}")
    if response.status_code == 422:
        raise UsageError(f"{base} refused the request: {detail}")
    _check_status(response, base, path, token)
    return response.json()


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", "")
    except ValueError:
        return ""
    return detail if isinstance(detail, str) else json.dumps(detail)


def _download_file(http: httpx.Client, base: str, version: str, name: str, expected: str, out: Path,
                   token: str | None) -> None:
    """One file through a hidden ``.partial`` name, renamed into place only once its sha256 matches;
    a dropped connection or a busy server (429, 502-504) is retried from the start with backoff."""
    partial = out / f".{name}.partial"
    try:
        for last in _attempts():
            digest = hashlib.sha256()
            try:
                with http.stream("GET", f"/v1/snapshots/{version}/files/{name}") as stream:
                    if stream.status_code in RETRY_STATUS and not last:
                        continue
                    _check_status(stream, base, version, token)
                    with open(partial, "wb") as f:
                        for chunk in stream.iter_bytes():
                            digest.update(chunk)
                            f.write(chunk)
                break
            except httpx.TransportError:
                if last:
                    raise
        if digest.hexdigest() != expected:
            raise SnapshotIntegrityError(f"sha256 mismatch for {name} downloaded from {base} ({version}): "
                                         f"manifest says {expected}, got {digest.hexdigest()}")
        partial.replace(out / name)
    finally:
        partial.unlink(missing_ok=True)  # a failed file leaves nothing behind


def _check_status(response: httpx.Response, base: str, version: str, token: str | None) -> None:
    code = response.status_code
    if code in (401, 403):
        hint = "wrong bearer token" if token else f"no bearer token given (--token or ${TOKEN_ENV})"
        raise AuthError(f"{base} refused the request ({code}): {hint}")
    if code == 404:
        raise NotFoundError(f"no snapshot {version} at {base} ({response.url.path} answered 404)")
    if response.is_error:
        raise UnreachableError(f"{base} answered {code} {response.reason_phrase} for {response.url.path}")


def build_module(folder: Path) -> nn.Module:
    """The plain torchvision module of a verified snapshot folder, weights loaded strictly, eval mode.

    From config.json's ``module``; snapshots published before it existed are rebuilt from
    their encoder spec."""
    config = json.loads((folder / CONFIG).read_text())
    if "module" in config:
        net = module_from_architecture(config["module"])
    else:
        net = build_encoder(EncoderSpec(config["arch"], config["image_size"], config["in_channels"],
                                        config["kwargs"])).net
    net.load_state_dict(safetensors.torch.load_file(folder / MODEL), strict=True)
    return net.eval()


def load_encoder(source: str | Path, version: str = LATEST, token: str | None = None) -> nn.Module:
    """``source``: an http(s) URL of a daemon, a snapshot root or one snapshot folder."""
    if _is_url(source):
        with tempfile.TemporaryDirectory(prefix="streamd-pull-") as tmp:
            return build_module(pull(source, version, tmp, token))
    folder = local_snapshot(source, version)
    verify(folder, local_manifest(folder))
    return build_module(folder)
