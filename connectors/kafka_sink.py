"""Kafka producers: the image sink (``streamd produce``, tests) and the dead-letter topic."""
from __future__ import annotations

from kafka import KafkaProducer

from streamd.connectors.base import CONTENT_TYPE_HEADER, Record
from streamd.connectors.wire import kafka_headers

DEAD_LETTER_REASON_HEADER = "streamd-dead-letter-reason"
DEAD_LETTER_POSITION_HEADER = "streamd-source-position"


class KafkaSink:
    """Produces encoded images (payload + headers) to a topic; used by ``streamd produce`` and tests."""

    def __init__(self, bootstrap_servers: str, topic: str, client_options: dict | None = None):
        options = {"max_request_size": 16 * 1024 * 1024, "linger_ms": 5, **(client_options or {})}
        self.topic = topic
        self._producer = KafkaProducer(bootstrap_servers=bootstrap_servers, **options)

    def send(self, payload: bytes, headers: dict[str, str], key: bytes | None = None, partition: int | None = None,
             wait: bool = False) -> None:
        future = self._producer.send(self.topic, value=payload, key=key, partition=partition,
                                     headers=kafka_headers(headers))
        if wait:
            future.get(timeout=30)

    def flush(self) -> None:
        self._producer.flush()

    def close(self) -> None:
        self._producer.close()


class KafkaDeadLetter:
    """Dead-letter topic: the original payload and headers plus the reason and source position.

    Each send waits for the broker's ack, because the record is acked (and its offset may be
    committed) right after: an in-flight dead letter must not be lost in a crash.
    """

    def __init__(self, bootstrap_servers: str, topic: str, client_options: dict | None = None):
        self._sink = KafkaSink(bootstrap_servers, topic, client_options)

    def send(self, record: Record, reason: str) -> None:
        headers = {**record.headers, CONTENT_TYPE_HEADER: record.content_type,
                   DEAD_LETTER_REASON_HEADER: reason, DEAD_LETTER_POSITION_HEADER: str(record.position)}
        self._sink.send(record.payload, headers, wait=True)

    def close(self) -> None:
        self._sink.close()
