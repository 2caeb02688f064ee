"""The config sections for where records come from (a folder, Kafka, Parquet) and where rejected
ones go; ``streamd.config`` assembles them with the rest into one tree."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class Section(BaseModel):
    """A config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class DirectorySourceConfig(Section):
    path: Path = Path("./var/inbox")
    task_from_subfolder: bool = True
    settle_seconds: float = Field(1.0, ge=0)
    on_commit: Literal["keep", "delete", "move"] = Field(
        "keep", description="what happens to a file (and its sidecar) once a durable checkpoint covers it")
    done_dir: Path | None = Field(None, description="where 'move' puts finished files; default <path>/.done")


class KafkaSourceConfig(Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "streamd-images"
    group_id: str = "streamd"
    max_poll_records: int = Field(256, ge=1)
    on_offsets_beyond_log_end: Literal["fail", "reset_to_log_start"] = Field(
        "fail", description="checkpoint/committed offsets past a partition's log end (topic replaced or "
        "truncated), or checkpoint offsets saved under another topic id (topic deleted and recreated, even "
        "with more records now): fail = hold the partition and report not ready; reset_to_log_start = read it "
        "from the start")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    client_options: dict[str, Any] = Field(default_factory=dict,
                                           description="passed to KafkaConsumer (fetch sizes, timeouts, SSL files)")

    def security_options(self) -> dict[str, Any]:
        """The kafka-python security settings (shared by the consumer and the dead-letter producer)."""
        opts: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            opts.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                        sasl_plain_password=self.sasl_password.get_secret_value() if self.sasl_password else None)
        return opts

    def consumer_options(self) -> dict[str, Any]:
        """KafkaConsumer keyword arguments: the security settings plus the free-form options."""
        return {**self.security_options(), **self.client_options}


class ParquetSourceConfig(Section):
    path: Path = Path("./var/images.parquet")
    image_column: str = "image"
    label_column: str = "label"
    task_column: str = "task"
    batch_rows: int = Field(256, ge=1)


class SourceConfig(Section):
    kind: Literal["directory", "kafka", "parquet"] = "directory"
    directory: DirectorySourceConfig = DirectorySourceConfig()
    kafka: KafkaSourceConfig = KafkaSourceConfig()
    parquet: ParquetSourceConfig = ParquetSourceConfig()


class DeadLetterConfig(Section):
    kind: Literal["folder", "kafka", "none"] = "folder"
    path: Path = Path("./var/dead-letter")
    topic: str = "streamd-dead-letter"   # kafka: same brokers and security as the source
    max_backlog: int = Field(256, ge=1, description="dead letters the sink failed to take, held for a retry; "
                                                    "at this many the daemon stops reading new records")
