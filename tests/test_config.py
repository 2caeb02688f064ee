"""Configuration: defaults are the demo, TOML < environment, errors name the field, secrets are masked."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from streamd.cli import main as streamd_main
from streamd.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "streamd.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_local_demo():
    cfg = load_config()
    assert cfg.source.kind == "directory" and cfg.source.directory.path == Path("var/inbox")
    assert cfg.checkpoint.dir == Path("var/checkpoints") and cfg.snapshots.dir == Path("var/snapshots")
    assert (cfg.api.host, cfg.api.port) == ("127.0.0.1", 9400)
    assert cfg.model.arch == "resnet18"


def test_environment_overrides_the_toml_file_which_overrides_defaults(tmp_path, monkeypatch):
    path = write(tmp_path, '[model]\narch = "resnet_tiny"\nimage_size = 16\n[source]\nkind = "kafka"\n'
                           '[source.kafka]\ntopic = "from-file"\nclient_options = {fetch_max_bytes = 1048576}\n')
    monkeypatch.setenv("STREAMD_SOURCE__KAFKA__TOPIC", "from-env")
    monkeypatch.setenv("STREAMD_LEARNER__BATCH_SIZE", "8")
    cfg = load_config(path)
    assert cfg.model.arch == "resnet_tiny" and cfg.model.image_size == 16   # file
    assert cfg.source.kafka.topic == "from-env" and cfg.learner.batch_size == 8  # environment
    assert cfg.source.kafka.consumer_options()["fetch_max_bytes"] == 1048576
    assert cfg.checkpoint.keep == 2  # default


def test_paths_not_set_default_under_state_dir_and_set_ones_are_kept(tmp_path, monkeypatch):
    """A container mounts one volume and sets STREAMD_STATE_DIR; a path given explicitly wins."""
    monkeypatch.setenv("STREAMD_STATE_DIR", "/srv/state")
    monkeypatch.setenv("STREAMD_CHECKPOINT__EVERY_STEPS", "5")    # the section is set, its dir is not
    cfg = load_config(write(tmp_path, '[snapshots]\ndir = "/pub/snapshots"\n[probe]\nhistory_dir = "rel/h"\n'))
    assert cfg.checkpoint.dir == Path("/srv/state/checkpoints") and cfg.checkpoint.every_steps == 5
    assert cfg.source.directory.path == Path("/srv/state/inbox") and cfg.dead_letter.path == Path("/srv/state/dead-letter")
    assert cfg.snapshots.dir == Path("/pub/snapshots") and cfg.probe.history_dir == Path("rel/h")
    assert cfg.written_paths() == {"checkpoint.dir": Path("/srv/state/checkpoints"),
                                   "snapshots.dir": Path("/pub/snapshots"), "dead_letter.path": Path("/srv/state/dead-letter"),
                                   "probe.history_dir": Path("rel/h")}
    monkeypatch.setenv("STREAMD_SOURCE__DIRECTORY__ON_COMMIT", "move")
    monkeypatch.setenv("STREAMD_DEAD_LETTER__KIND", "kafka")
    moved = load_config().written_paths()
    assert "dead_letter.path" not in moved and moved["source.directory.done_dir"] == Path("/srv/state/inbox/.done")


def test_a_missing_bench_extra_is_a_usage_error_that_says_what_to_install():
    from streamd.errors import UsageError
    from streamd.extras import import_extra

    with pytest.raises(UsageError, match=r"plots needs no_such_module_x, .*pip install 'streamd\[bench\]'"):
        import_extra("no_such_module_x.sub", "plots")
    assert import_extra("json", "x") is json


@pytest.mark.parametrize("text, env, expected", [
    ('[source]\nkind = "ftp"\n', {}, ["source.kind", "'directory', 'kafka' or 'parquet'"]),
    ("", {"STREAMD_BOUNDARY__MODE": "guess"}, ["boundary.mode", "'header', 'drift' or 'both'"]),
    ('[model]\narch = "resnet7"\n', {}, ["model.arch", "unknown encoder arch 'resnet7'; allowed: resnet18, resnet50,"]),
    ('[model]\nobjective = "dino"\n', {}, ["model.objective", "unknown objective 'dino'; allowed: barlow, byol, mocov3,"]),
    ('[strategy]\nname = "lump+magic"\n', {}, ["strategy.name", "magic", "replay"]),
    ('[strategy]\nname = "lump"\n[strategy.plugin_options.lump]\nalpah = 0.2\n', {},
     ["strategy", "lump options: alpah: Extra inputs are not permitted", "allowed: capacity, alpha, balance, seed"]),
    ('[strategy]\nname = "lump"\n[strategy.plugin_options.lump]\nalpha = 0\n', {},
     ["lump options: alpha: Input should be greater than 0"]),
    ('[strategy]\nname = "replay"\n[strategy.plugin_options.lump]\nalpha = 0.2\n', {},
     ["plugin_options for lump, which strategy 'replay' does not use (its plugins: replay)"]),
    ('[strategy]\nname = "exssnet"\n[strategy.plugin_options.exssnet]\ninfer_by = "votes"\n', {},
     ["exssnet options: infer_by: Input should be 'features' or 'ssl_loss'"]),
    ("[learner]\nbatch_sise = 3\n", {}, ["learner.batch_sise", "Extra inputs are not permitted"]),
    ("[api]\nport = 70000\n", {}, ["api.port", "65535"]),
    ("[model\n", {}, ["not valid TOML"]),
    ("[learner]\nbatch_size = 8\nmin_batch_size = 9\n", {}, ["learner", "min_batch_size 9 > batch_size 8"]),
    ("[learner]\nmax_wait_seconds = 5\nmax_hold_seconds = 1\n", {}, ["max_hold_seconds 1.0 < max_wait_seconds 5.0"]),
])
def test_invalid_settings_fail_with_the_field_and_the_allowed_values(tmp_path, monkeypatch, text, env, expected):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    for fragment in expected:
        assert fragment in str(err.value)


def test_run_refuses_an_invalid_config_before_starting(tmp_path, capsys):
    assert streamd_main(["run", "--config", str(write(tmp_path, '[boundary]\nmode = "sometimes"\n'))]) == 2
    assert "invalid setting boundary.mode" in capsys.readouterr().err


def test_config_show_prints_the_effective_config_with_secrets_masked(tmp_path, monkeypatch, capsys):
    path = write(tmp_path, '[api]\ntoken = "file-token-123"\n[source.kafka]\nsasl_mechanism = "PLAIN"\n'
                           'sasl_username = "u"\nsasl_password = "hunter2-secret"\n')
    monkeypatch.setenv("STREAMD_API__PORT", "9555")
    assert streamd_main(["config", "show", "--config", str(path)]) == 0
    toml_text = capsys.readouterr().out
    shown = tomllib.loads(toml_text)
    assert shown["api"]["port"] == 9555 and shown["api"]["token"] == "**********"
    assert shown["source"]["kafka"]["sasl_password"] == "**********"
    assert "file-token-123" not in toml_text and "hunter2-secret" not in toml_text
    assert streamd_main(["config", "show", "--config", str(path), "--format", "json"]) == 0
    json_text = capsys.readouterr().out
    assert json.loads(json_text)["api"] == shown["api"] and "hunter2" not in json_text
    # The real values still reach the code that needs them.
    cfg = load_config(path)
    assert cfg.source.kafka.consumer_options()["sasl_plain_password"] == "hunter2-secret"
    assert cfg.api.token.get_secret_value() == "file-token-123"


def test_a_typo_in_the_optim_section_fails_at_start(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[optim]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(path)
