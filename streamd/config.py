"""The daemon's configuration: one validated tree from defaults < TOML file (--config) < environment.

Environment variables use the prefix ``STREAMD_`` and ``__`` between levels, e.g.
``STREAMD_SOURCE__KIND=kafka`` or ``STREAMD_API__TOKEN=...``. The defaults are the embedded demo
(a folder inbox under ./var, local checkpoints and snapshots, the API on localhost). Every path the
daemon reads or writes defaults under one ``state_dir`` (``STREAMD_STATE_DIR``), so a container needs
one volume and one setting; a path set explicitly is kept as given. Unknown keys
and bad values fail at start with the field's dotted name and the allowed values, because a typo
in a long-running daemon's config should never be silently ignored.
"""
from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from streamd.config_sources import DeadLetterConfig, Section, SourceConfig
from streamd.errors import UsageError
from streamd.learning.optim import OptimConfig


class ModelConfig(Section):
    arch: str = "resnet18"
    image_size: int = Field(32, ge=8, le=1024)
    objective: str = "simsiam"
    objective_kwargs: dict[str, Any] = Field(default_factory=dict)
    augment_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        from streamd.models.encoders import ENCODERS
        ENCODERS.lookup(v)
        return v

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, v: str) -> str:
        from streamd.models.objectives import OBJECTIVES
        OBJECTIVES.lookup(v)
        return v


class StrategyConfig(Section):
    name: str = "lump"
    plugin_options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_plugins(cls, v: str) -> str:
        from streamd.learning.plugins import strategy_plugins
        strategy_plugins(v)
        return v

    @model_validator(mode="after")
    def _typed_plugin_options(self) -> "StrategyConfig":
        """Each plugin's options against its model: a typo fails at start instead of being ignored."""
        from streamd.learning.plugins import validate_plugin_options
        validate_plugin_options(self.name, self.plugin_options)
        return self


class LearnerConfig(Section):
    device: str = "auto"
    amp: Literal["auto", "bf16", "off"] = "auto"
    compile: bool = False
    batch_size: int = Field(64, ge=2)
    max_wait_seconds: float = Field(2.0, gt=0, description="a partial batch of min_batch_size or more trains "
                                                          "after this wait")
    min_batch_size: int = Field(2, ge=1, description="a partial batch smaller than this waits for more images...")
    max_hold_seconds: float = Field(30.0, gt=0, description="...but trains, however small, after this wait")

    @model_validator(mode="after")
    def _waits_in_order(self) -> "LearnerConfig":
        if self.min_batch_size > self.batch_size:
            raise ValueError(f"min_batch_size {self.min_batch_size} > batch_size {self.batch_size}")
        if self.max_hold_seconds < self.max_wait_seconds:
            raise ValueError(f"max_hold_seconds {self.max_hold_seconds} < max_wait_seconds {self.max_wait_seconds}")
        return self


class BoundaryConfig(Section):
    mode: Literal["header", "drift", "both"] = "both"
    window: int = Field(64, ge=8, description="newest embeddings compared with the reference")
    reference_size: int = Field(256, ge=16, description="reservoir of the current segment")
    min_segment_batches: int = Field(8, ge=1)
    cooldown_batches: int = Field(8, ge=0)
    calibration_batches: int = Field(4, ge=2, description="batches that fix the statistic's null mean/scale")
    ph_delta: float = Field(0.5, ge=0, description="Page-Hinkley tolerance, in standard deviations")
    ph_threshold: float = Field(8.0, gt=0, description="Page-Hinkley alarm level, in standard deviations")


class CheckpointConfig(Section):
    dir: Path = Path("./var/checkpoints")
    every_steps: int = Field(100, ge=0)
    every_seconds: float = Field(60.0, ge=0)
    keep: int = Field(2, ge=1)


class PublishGateConfig(Section):
    """When ``latest`` may move to a new snapshot (streamd.service.publish_gate); failing ones stay candidates."""

    enabled: bool = True
    min_std_ratio: float = Field(0.05, ge=0, description="feature spread below this is a collapse")
    min_effective_rank: float = Field(1.5, ge=1, description="effective rank below this is a dimensional collapse")
    max_accuracy_drop: float = Field(0.15, ge=0, le=1, description="mean probe accuracy drop vs latest's on the "
                                     "tasks both measured (labels only; small probe sets are noisy: leave room)")
    max_drift: float = Field(1.0, ge=0, le=1, description="largest task drift allowed; 1 = not checked")


class SnapshotConfig(Section):
    dir: Path = Path("./var/snapshots")
    every_steps: int = Field(0, ge=0)
    every_seconds: float = Field(300.0, ge=0)
    keep_last: int = Field(5, ge=1)
    keep_task_end: int = Field(20, ge=0, description="task-end snapshots kept beyond keep_last, newest first; "
                                                     "0 keeps all")
    gate: PublishGateConfig = PublishGateConfig()


class ProbeConfig(Section):
    per_task: int = Field(64, ge=0)
    every_steps: int = Field(200, ge=1)
    history_dir: Path | None = Path("./var/probe-history")
    max_pending_rows: int = Field(10_000, ge=1, description="history rows held in memory while the history "
                                                            "folder cannot be written; the oldest are dropped")


class ApiConfig(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9400, ge=0, le=65535)
    token: SecretStr | None = None


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    progress_seconds: float = Field(5.0, gt=0)


# Settings whose default lives under ``state_dir``, and the name it gets there.
STATE_PATHS = {"source.directory.path": "inbox", "source.parquet.path": "images.parquet",
               "dead_letter.path": "dead-letter", "checkpoint.dir": "checkpoints", "snapshots.dir": "snapshots",
               "probe.history_dir": "probe-history"}


def _default_to(section: BaseModel, dotted: str, value: Path) -> BaseModel:
    """``section`` with the setting at ``dotted`` set to ``value``, unless the user set it."""
    head, _, rest = dotted.partition(".")
    if rest:
        return section.model_copy(update={head: _default_to(getattr(section, head), rest, value)})
    return section if head in section.model_fields_set else section.model_copy(update={head: value})


class StreamdConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMD_", env_nested_delimiter="__", extra="forbid")

    source: SourceConfig = SourceConfig()
    dead_letter: DeadLetterConfig = DeadLetterConfig()
    model: ModelConfig = ModelConfig()
    strategy: StrategyConfig = StrategyConfig()
    optim: OptimConfig = OptimConfig()
    learner: LearnerConfig = LearnerConfig()
    boundary: BoundaryConfig = BoundaryConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    snapshots: SnapshotConfig = SnapshotConfig()
    probe: ProbeConfig = ProbeConfig()
    api: ApiConfig = ApiConfig()
    logging: LoggingConfig = LoggingConfig()
    audit_log: Path | None = Field(None, description="append one line per consumed record position (tests, audits)")
    state_dir: Path = Field(Path("./var"), description="where every path not set explicitly lives")

    toml_file: ClassVar[Path | None] = None  # load_config binds it on a subclass

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings]
        if cls.toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.toml_file))
        return tuple(sources)


    @model_validator(mode="after")
    def _paths_under_state_dir(self) -> "StreamdConfig":
        for dotted, name in STATE_PATHS.items():
            section, _, rest = dotted.partition(".")
            object.__setattr__(self, section, _default_to(getattr(self, section), rest, self.state_dir / name))
        return self

    def written_paths(self) -> dict[str, Path]:
        """Every path the daemon may create or write with this configuration, by its dotted setting."""
        paths = {"checkpoint.dir": self.checkpoint.dir, "snapshots.dir": self.snapshots.dir}
        if self.dead_letter.kind == "folder":
            paths["dead_letter.path"] = self.dead_letter.path
        if self.probe.history_dir is not None:
            paths["probe.history_dir"] = self.probe.history_dir
        if self.audit_log is not None:
            paths["audit_log"] = self.audit_log
        directory = self.source.directory
        if self.source.kind == "directory" and directory.on_commit != "keep":
            paths["source.directory.path"] = directory.path
            if directory.on_commit == "move":
                paths["source.directory.done_dir"] = directory.done_dir or directory.path / ".done"
        return paths


class ConfigError(UsageError, ValueError):
    """A readable one-error-per-line message: ``field.path: what is wrong`` (the CLI exits 2)."""


def load_config(path: str | Path | None = None, **overrides) -> StreamdConfig:
    """Defaults < the TOML file at ``path`` < STREAMD_* environment < ``overrides``."""
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist" if not Path(path).exists()
                          else f"config file {path} is not a file")
    bound = type("StreamdConfig", (StreamdConfig,), {"toml_file": Path(path) if path else None})
    try:
        return bound(**overrides)
    except ValidationError as e:
        raise ConfigError(format_errors(e)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text: {e.reason} at byte {e.start}") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None


def format_errors(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        got = "" if err["type"] == "missing" else f" (got {err.get('input')!r})"
        lines.append(f"invalid setting {field}: {err['msg']}{got}")
    return "\n".join(lines)


def masked_dict(cfg: StreamdConfig) -> dict:
    """The effective configuration as plain JSON values, secrets shown as '**********'."""
    return json.loads(cfg.model_dump_json())


def to_toml(cfg: BaseModel, prefix: str = "") -> str:
    """The effective configuration as TOML (secrets masked): sections become tables, the rest inline."""
    plain = json.loads(cfg.model_dump_json())
    lines, tables = [], []
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        if isinstance(value, BaseModel):
            tables.append(to_toml(value, f"{prefix}.{name}" if prefix else name))
        elif plain[name] is not None:
            lines.append(f"{name} = {_toml_value(plain[name])}")
    head = ([f"[{prefix}]"] if prefix and lines else []) + lines
    return "\n\n".join(part for part in ["\n".join(head), *tables] if part)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")
