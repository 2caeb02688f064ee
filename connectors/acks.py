"""The acked prefix of one ordered stream (a Kafka partition, a Parquet file).

A source hands records out in offset order; the daemon acks them (usually in order, but a
multi-image message is done only when all of its images are acked). The checkpoint must hold
the first offset that is NOT finished, plus which images of a partly finished message are
done, so that a restart re-delivers exactly what was not finished. Offsets may have gaps
(compacted topics), so the prefix is computed from what was handed out, never by counting.
"""
from __future__ import annotations

from streamd.connectors.base import Position


class AckedPrefix:
    def __init__(self, next_offset: int | None = None, partial: dict[int, list[int]] | None = None):
        self.next_offset = next_offset            # first offset not yet finished (None: unknown yet)
        self._pending: dict[int, tuple[int, set[int]]] = {}   # handed out, unfinished: offset -> (count, done)
        self._already_done = {int(k): set(v) for k, v in (partial or {}).items()}   # from the checkpoint

    def skip(self, position: Position) -> bool:
        """True for an image the checkpoint already counts as done (a partly finished message)."""
        return position.index in self._already_done.get(position.offset, ())

    def handed_out(self, position: Position) -> None:
        if self.next_offset is None:
            self.next_offset = position.offset
        if position.offset not in self._pending:
            self._pending[position.offset] = (position.count, set(self._already_done.pop(position.offset, ())))

    def ack(self, position: Position) -> None:
        entry = self._pending.get(position.offset)
        if entry is None:       # acked twice, or handed out before a seek/revoke: nothing to track
            return
        entry[1].add(position.index)
        while self._pending:    # advance over the finished head (dicts keep hand-out order)
            offset, (count, done) = next(iter(self._pending.items()))
            if len(done) < count:
                break
            del self._pending[offset]
            self.next_offset = offset + 1

    def state(self) -> tuple[int | None, dict[str, list[int]]]:
        """(first unfinished offset, {offset: done image indices} of partly finished messages)."""
        partial = {str(o): sorted(done) for o, (_, done) in self._pending.items() if done}
        partial.update({str(o): sorted(d) for o, d in self._already_done.items()})
        first = next(iter(self._pending), self.next_offset)
        return first, partial
