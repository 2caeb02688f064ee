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
from pathlib import Path

import httpx
import safetensors.torch
from torch import nn

from models.encoders import EncoderSpec, build_encoder
from streamd.snapshots import (CONFIG, LATEST, MANIFEST, MODEL, VERSION_RE, read_manifest, resolve_version,
                               sha256_file)

TOKEN_ENV = "STREAMD_API__TOKEN"
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a plain name: no folders, no '..', no hidden files


class SnapshotIntegrityError(RuntimeError):
    """A snapshot file is missing or differs from its sha256, or the manifest names unsafe files."""


def _is_url(source: str | Path) -> bool:
    return str(source).startswith(("http://", "https://"))


def check_manifest(manifest: dict, where: str) -> None:
    """A manifest (possibly from a remote server) must name the two files and only plain file names."""
    files = manifest.get("files", {})
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
    name = resolve_version(source, version)
    if name is None:
        raise FileNotFoundError(f"no snapshot {version!r} under {source}")
    return source / name


def pull(source: str | Path, version: str = LATEST, out_dir: str | Path = "snapshot",
         token: str | None = None) -> Path:
    """Copies one verified snapshot (the three files) into ``out_dir`` and returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if _is_url(source):
        _download(str(source).rstrip("/"), version, out, token or os.environ.get(TOKEN_ENV))
    else:
        folder = local_snapshot(source, version)
        manifest = read_manifest(folder)
        verify(folder, manifest)
        for name in [*manifest["files"], MANIFEST]:
            (out / name).write_bytes((folder / name).read_bytes())
    return out


def _download(base: str, version: str, out: Path, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=base, headers=headers, timeout=60.0) as http:
        response = http.get(f"/v1/snapshots/{version}")
        response.raise_for_status()
        manifest = response.json()
        check_manifest(manifest, base)  # its names become local paths and URLs below
        concrete = manifest["name"]  # pin the files to the version the manifest came from
        for name, expected in manifest["files"].items():
            digest = hashlib.sha256()
            partial = out / f".{name}.partial"
            with http.stream("GET", f"/v1/snapshots/{concrete}/files/{name}") as stream, open(partial, "wb") as f:
                stream.raise_for_status()
                for chunk in stream.iter_bytes():
                    digest.update(chunk)
                    f.write(chunk)
            if digest.hexdigest() != expected:
                partial.unlink()
                raise SnapshotIntegrityError(f"sha256 mismatch for {name} downloaded from {base} ({concrete}): "
                                             f"manifest says {expected}, got {digest.hexdigest()}")
            partial.replace(out / name)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2))


def build_module(folder: Path) -> nn.Module:
    """The plain torchvision module of a verified snapshot folder, weights loaded strictly, eval mode."""
    config = json.loads((folder / CONFIG).read_text())
    spec = EncoderSpec(config["arch"], config["image_size"], config["in_channels"], config["kwargs"])
    net = build_encoder(spec).net  # ResNets: models.encoders.build_torchvision_resnet; ViT: VisionTransformer
    net.load_state_dict(safetensors.torch.load_file(folder / MODEL), strict=True)
    return net.eval()


def load_encoder(source: str | Path, version: str = LATEST, token: str | None = None) -> nn.Module:
    """``source``: an http(s) URL of a daemon, a snapshot root or one snapshot folder."""
    if _is_url(source):
        with tempfile.TemporaryDirectory(prefix="streamd-pull-") as tmp:
            return build_module(pull(source, version, tmp, token))
    folder = local_snapshot(source, version)
    verify(folder, read_manifest(folder))
    return build_module(folder)
