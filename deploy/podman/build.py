#!/usr/bin/env python3
"""Builds the streamd image with podman on a host whose only reachable network is a package index.

No registry image can be pulled there, so the build starts from the local bookworm base that
host-setup.sh makes, and pip inside the build must reach the same packages as pip on the host: this
script writes the host's effective pip settings (every scope, environment included) into one
pip.conf and mounts it, read-only, with every file and folder those settings name (CA bundle,
constraints, find-links and file:// index folders). Elsewhere, ``docker build .`` uses the public
Python base and needs none of this.

    python3 deploy/podman/build.py [--tag localhost/streamd:VERSION] [--base IMAGE]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BASE = "localhost/streamd-base:bookworm"
PATH_KEYS = {"cert", "client-cert", "constraint", "requirement", "find-links", "index-url", "extra-index-url"}


def effective_pip_settings() -> dict[str, str]:
    """``pip config list`` merged into one [global] section; the environment wins, as it does for pip."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                         check=True).stdout
    ranked: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        match = re.fullmatch(r"(:env:|[\w-]+)\.([\w-]+)='(.*)'", line.strip())
        if not match:
            continue
        scope, key, value = match.groups()
        rank = {":env:": 3, "install": 2, "global": 1}.get(scope, 0)
        if rank and rank >= ranked.get(key, (0, ""))[0]:
            ranked[key] = (rank, value)
    return {key: value for key, (_, value) in ranked.items()}


def host_paths(settings: dict[str, str]) -> list[Path]:
    """The local files and folders the pip settings name (URLs other than file:// need no mount).

    A file:// index is mounted with its parent: a PEP 503 ``simple/`` tree links its files as
    ``../../files/...``."""
    paths = []
    for key, value in settings.items():
        if key not in PATH_KEYS:
            continue
        for item in value.split():
            item = item.removeprefix("file://")
            if item.startswith("/") and Path(item).exists():
                paths.append(Path(item).parent if key.endswith("index-url") else Path(item))
    return sorted(set(paths))


def pip_conf(settings: dict[str, str]) -> str:
    return "[global]\n" + "".join(f"{key} = {value}\n" for key, value in sorted(settings.items()))


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def build(tag: str, base: str) -> None:
    settings = effective_pip_settings()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "pip.conf"
        conf.write_text(pip_conf(settings))
        conf.chmod(0o644)
        mounts = [f"--volume={conf}:/etc/pip.conf:ro"]
        mounts += [f"--volume={p}:{p}:ro" for p in host_paths(settings)]
        cmd = ["podman", "build", "--format=docker", "--network=host",  # docker format keeps HEALTHCHECK
               f"--build-arg=BASE={base}", f"--tag={tag}", *mounts,
               "--file", str(ROOT / "Dockerfile"), str(ROOT)]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default=f"localhost/streamd:{version()}")
    parser.add_argument("--base", default=os.environ.get("BASE_IMAGE", DEFAULT_BASE))
    args = parser.parse_args()
    build(args.tag, args.base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
