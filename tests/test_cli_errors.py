"""Every expected failure of a ``streamd`` command is one ``streamd: ...`` line on stderr and the
documented exit code, never a traceback. Each case runs the real CLI as a process against real
parts: the project's HTTP API serving real snapshots, a port with nothing listening, a socket
that never answers, a bound port, real files and folders."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port
from daemon_fixtures import write_config
from publishing_fixtures import tiny_learner
from streamd.service.api import ApiServer
from streamd.cli import build_parser, main
from streamd.errors import EXIT_CODES
from streamd.service.metrics import Metrics
from streamd.service.snapshots import SnapshotPublisher

TOKEN = "cli-test-token"
README = Path(__file__).resolve().parents[1] / "README.md"


def streamd(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}
    return subprocess.run([sys.executable, "-m", "streamd", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**environ, "OMP_NUM_THREADS": "1", **(env or {})})


def assert_fails(result: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """Exactly one stderr line, ``streamd: ...`` holding each fragment, and the exit code."""
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("streamd: "), result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory) -> Path:
    """A snapshot root: v000001 with a corrupted model file, v000002 intact (latest)."""
    root = tmp_path_factory.mktemp("store") / "snapshots"
    publisher, learner = SnapshotPublisher(root), tiny_learner()
    for _ in range(2):
        publisher.publish(learner, reason="steps", task=0, segment=0, positions={})
    model = root / "v000001" / "model.safetensors"
    blob = bytearray(model.read_bytes())
    blob[-1] ^= 0xFF
    model.write_bytes(bytes(blob))
    return root


@pytest.fixture(scope="module")
def servers(snapshots):
    """The daemon's API over that root: an open one and one that wants a bearer token."""
    running = [ApiServer("127.0.0.1", 0, snapshots, Metrics(), ready=lambda: True, token=token)
               for token in (None, TOKEN)]
    for api in running:
        api.start()
    yield tuple(f"http://127.0.0.1:{api.port}" for api in running)
    for api in running:
        api.stop()


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "plain-file"
    path.write_text("not a folder")
    return path


# pull ---------------------------------------------------------------------------------------------
def test_pull_succeeds_from_both_servers_so_the_failures_below_are_the_cases_themselves(servers, tmp_path):
    open_url, token_url = servers
    assert streamd("pull", open_url, "--out", tmp_path / "a").returncode == 0
    ok = streamd("pull", token_url, "--out", tmp_path / "b", env={"STREAMD_API__TOKEN": TOKEN})
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["README.md", "config.json", "manifest.json", "model.safetensors"]


@pytest.mark.parametrize("where", ["http", "folder"])
def test_pull_sha256_mismatch_exits_4_and_leaves_no_model(servers, snapshots, tmp_path, where):
    source = servers[0] if where == "http" else snapshots
    out = tmp_path / "out"
    assert_fails(streamd("pull", source, "--version", "v000001", "--out", out), 4,
                 "sha256 mismatch for model.safetensors")
    assert not (out / "model.safetensors").exists()
    assert not list(out.glob(".*.partial"))


@pytest.mark.parametrize("where", ["http", "folder"])
def test_pull_missing_version_exits_3(servers, snapshots, tmp_path, where):
    source = servers[0] if where == "http" else snapshots
    assert_fails(streamd("pull", source, "--version", "v000009", "--out", tmp_path / "out"), 3,
                 "no snapshot v000009")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("token,hint", [(None, "no bearer token given"), ("wrong", "wrong bearer token")])
def test_pull_without_or_with_a_wrong_token_exits_5(servers, tmp_path, token, hint):
    args = ["--token", token] if token else []
    assert_fails(streamd("pull", servers[1], "--out", tmp_path / "out", *args), 5, "(401)", hint)


def test_pull_from_a_port_with_nothing_listening_exits_6(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    assert_fails(streamd("pull", url, "--out", tmp_path / "out"), 6, f"cannot reach {url}", "refused")


def test_pull_from_an_unknown_host_exits_6(tmp_path):
    assert_fails(streamd("pull", "http://no-such-host.invalid:9400", "--out", tmp_path / "out"), 6,
                 "cannot reach http://no-such-host.invalid:9400")


def test_pull_from_a_server_that_never_answers_exits_6_after_the_timeout(tmp_path):
    with socket.socket() as silent:  # the kernel accepts the connection; nobody ever reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        assert_fails(streamd("pull", url, "--out", tmp_path / "out", "--timeout", "1"), 6, f"cannot reach {url}")


def test_pull_from_a_folder_that_is_not_a_snapshot_store_exits_3(tmp_path, a_file):
    assert_fails(streamd("pull", a_file.parent, "--out", tmp_path / "out"), 3, "is not a snapshot store")
    assert_fails(streamd("pull", tmp_path / "absent", "--out", tmp_path / "out"), 3, "no snapshot folder")


@pytest.mark.parametrize("where", ["http", "folder"])
def test_pull_into_an_output_that_cannot_be_written_exits_7(servers, snapshots, a_file, where):
    source = servers[0] if where == "http" else snapshots
    assert_fails(streamd("pull", source, "--out", a_file / "out"), 7, "cannot write the snapshot into",
                 "Not a directory")


def test_pull_with_a_malformed_version_exits_2(snapshots, tmp_path):
    assert_fails(streamd("pull", snapshots, "--version", "7", "--out", tmp_path / "out"), 2, "vNNNNNN or an alias such as latest")


# run and config show ------------------------------------------------------------------------------
def test_run_with_the_api_port_in_use_exits_7(tmp_path):
    config = write_config(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = streamd("run", "--config", config, env={"STREAMD_API__HOST": "127.0.0.1",
                                                         "STREAMD_API__PORT": str(port),
                                                         "STREAMD_LOGGING__LEVEL": "WARNING"})
    assert_fails(result, 7, f"cannot serve the HTTP API on 127.0.0.1:{port}", "Address already in use")
    assert result.stdout == ""


@pytest.mark.parametrize("setting", ["STREAMD_SNAPSHOTS__DIR", "STREAMD_PROBE__HISTORY_DIR"])
def test_run_with_a_state_path_it_cannot_write_exits_7_before_starting(tmp_path, a_file, setting):
    """The container case (a volume the uid cannot write) stops the start in one line, whichever
    part would have written there first; the tests run as root, so a regular file stands in the way."""
    result = streamd("run", "--config", write_config(tmp_path), env={setting: str(a_file / "sub")})
    assert_fails(result, 7, f"{setting[8:].lower().replace('__', '.')} {a_file / 'sub'} cannot be written",
                 "Not a directory", "STREAMD_STATE_DIR")
    assert result.stdout == "" and not list((tmp_path / "ckpt").iterdir()), "nothing ran"


@pytest.mark.parametrize("command", [["run"], ["config", "show"]])
def test_invalid_config_exits_2_with_every_error_on_one_line(tmp_path, command):
    config = tmp_path / "bad.toml"
    config.write_text('[model]\narch = "nope"\n[learner]\nbatch_size = -1\n')
    line = assert_fails(streamd(*command, "--config", config), 2, "model.arch", "learner.batch_size")
    assert "; invalid setting" in line


@pytest.mark.parametrize("content,fragment", [(b"x = \n", "is not valid TOML"),
                                              (b"\xff\xfe[model]\n", "is not UTF-8 text")])
def test_unreadable_config_exits_2(tmp_path, content, fragment):
    config = tmp_path / "bad.toml"
    config.write_bytes(content)
    assert_fails(streamd("run", "--config", config), 2, f"config file {config}", fragment)


def test_config_that_is_missing_or_a_folder_exits_2(tmp_path):
    assert_fails(streamd("config", "show", "--config", tmp_path / "absent.toml"), 2, "does not exist")
    assert_fails(streamd("config", "show", "--config", tmp_path), 2, "is not a file")


def test_invalid_environment_override_exits_2():
    assert_fails(streamd("config", "show", env={"STREAMD_API__PORT": "70000"}), 2, "api.port")


# report and produce -------------------------------------------------------------------------------
def test_report_on_missing_empty_or_non_parquet_history(tmp_path, a_file):
    assert_fails(streamd("report", tmp_path / "absent", "--out", tmp_path / "r"), 3, "no probe history at")
    (tmp_path / "empty").mkdir()
    assert_fails(streamd("report", tmp_path / "empty", "--out", tmp_path / "r"), 3, "holds no probe history yet")
    assert_fails(streamd("report", a_file, "--out", tmp_path / "r"), 2, "is not a Parquet probe history")


def test_produce_to_an_unreachable_broker_exits_6(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    assert_fails(streamd("produce", "kafka", "--bootstrap-servers", address, "--dataset", "digits", "--tasks", "2",
                         "--client-option", "bootstrap_timeout_ms=2000"), 6,
                 f"cannot reach the Kafka broker at {address}")


def test_produce_from_a_missing_input_or_into_an_unwritable_folder(tmp_path, a_file):
    assert_fails(streamd("produce", "dir", "--out", tmp_path / "o", "--dataset", f"imagefolder:{tmp_path / 'absent'}"),
                 3, "no input folder")
    assert_fails(streamd("produce", "dir", "--out", tmp_path / "o", "--parquet", tmp_path / "absent.parquet"),
                 3, "no Parquet file")
    assert_fails(streamd("produce", "dir", "--out", a_file / "o", "--dataset", "digits", "--tasks", "2"),
                 7, f"cannot write into {a_file / 'o'}", "Not a directory")
    assert not (tmp_path / "o").exists()


# the contract itself ------------------------------------------------------------------------------
def test_an_unexpected_exception_is_not_swallowed(monkeypatch, tmp_path):
    import streamd.commands.report

    def bug(args):
        raise KeyError("a bug")

    monkeypatch.setattr(streamd.commands.report, "run", bug)
    with pytest.raises(KeyError, match="a bug"):
        main(["report", str(tmp_path), "--out", str(tmp_path)])


def test_exit_codes_are_listed_in_help_and_readme():
    listed = {int(code): meaning for code, meaning in re.findall(r"^\| (\d) \| (.+?) \|$", README.read_text(), re.M)}
    assert listed == dict(EXIT_CODES)
    epilog = build_parser().format_help()
    assert all(f"  {code}  {meaning}" in epilog for code, meaning in EXIT_CODES)
