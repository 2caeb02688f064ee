"""``pip install streamd`` (no extras) is the pull client: in a process where every module of the
``daemon`` extra fails to import, as on a machine without it, a downstream team can still pull a
snapshot from a daemon, verify it, load it and move aliases, and the daemon's commands say what to
install instead of crashing."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from publishing_fixtures import tiny_learner

from streamd.service.api import ApiServer
from streamd.service.metrics import Metrics
from streamd.service.snapshots import SnapshotPublisher

ROOT = Path(__file__).resolve().parents[1]
# Each daemon-extra distribution and the modules it (or what only it pulls in) provides.
DAEMON_MODULES = {"kornia": ["kornia", "kornia_rs"], "kafka-python": ["kafka"], "crc32c": ["crc32c"],
                  "pyarrow": ["pyarrow"], "prometheus-client": ["prometheus_client"],
                  "pydantic": ["pydantic", "pydantic_core"], "pydantic-settings": ["pydantic_settings"],
                  "fastapi": ["fastapi", "starlette"], "uvicorn": ["uvicorn"], "scikit-learn": ["sklearn", "scipy"],
                  "pillow": []}   # torchvision, a client dependency, requires pillow itself
BLOCKER = '''import sys
from importlib.abc import Loader
from importlib.machinery import ModuleSpec

BLOCKED = set(sys.argv.pop(1).split(","))


class NotInstalled(Loader):
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)

    def exec_module(self, module):
        pass


class Finder:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return ModuleSpec(name, NotInstalled())


sys.meta_path.insert(0, Finder())
from streamd.cli import main
code = main(sys.argv[1:])
assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED and sys.modules[m] is not None]
if sys.argv[1] == "pull":
    from streamd.client import load_encoder
    print(type(load_encoder(sys.argv[-1])).__name__)
sys.exit(code)
'''


def daemon_extra() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["optional-dependencies"]["daemon"]]
    assert set(names) == set(DAEMON_MODULES), "a daemon dependency was added or removed: update DAEMON_MODULES"
    assert not set(names) & {d.split("=")[0].split(">")[0] for d in project["dependencies"]}
    return [m for name in names for m in DAEMON_MODULES[name]]


def client(tmp_path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "client.py"
    script.write_text(BLOCKER)
    return subprocess.run([sys.executable, str(script), ",".join(daemon_extra()), *args], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)


def test_the_client_works_without_the_daemon_extra(tmp_path):
    root = tmp_path / "snapshots"
    SnapshotPublisher(root).publish(tiny_learner(), reason="steps", task=0, segment=0, positions={})
    api = ApiServer("127.0.0.1", 0, root, Metrics(), ready=lambda: True, token="t")
    api.start()
    try:
        url = f"http://127.0.0.1:{api.port}"
        pulled = client(tmp_path, "pull", url, "--token", "t", "--out", str(tmp_path / "enc"))
        assert pulled.returncode == 0, pulled.stderr
        assert pulled.stdout.splitlines()[-1] == "ResNet"
        promoted = client(tmp_path, "alias", "promote", url, "stable", "latest", "--token", "t")
        assert promoted.returncode == 0, promoted.stderr
    finally:
        api.stop()
    refused = client(tmp_path, "run")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("streamd: streamd run needs the daemon's dependencies (")
    assert "pip install 'streamd[daemon]'" in refused.stderr
