"""Fixes for kafka-python's group join (checked against 3.0.12): a started join is always finished and used.

kafka-python runs JoinGroup + SyncGroup as a task on its IO thread; ``poll()`` awaits that task
for at most its own timeout and leaves it running. When the task finishes while the owner is not
inside ``poll()`` (it is training, or another member is being polled), the next ``poll()`` finds
the task done but ``rejoin_needed`` still set (only the awaiting code clears it), and
``BaseCoordinator.join_group_async`` starts a NEW JoinGroup (``if self._join_task is None or
self._join_task.is_done``), throwing away the assignment the broker just handed out. The new
JoinGroup opens another rebalance round, which makes the other members rejoin too; against tansu,
whose join waits half the session timeout, members that poll in turns can do this forever (the
flaky rebalance test: one member stuck "rebalancing", the other without partitions).

``install_join_fix()`` wraps ``join_group_async``: a join task that already succeeded is completed
exactly as kafka-python completes one it awaited (member stable, heartbeat on, assignment
applied through ``_on_join_complete_async``). Heartbeats are off while a join task runs, so no
newer rebalance request can have arrived in between. Failed or unfinished tasks take the
original path.

A join is also finished when the reason for it went away meanwhile. ``ConsumerCoordinator.poll()``
calls ``ensure_active_group()`` only while ``need_rejoin()``; a metadata change alone (the
assignment snapshot differs from the metadata, e.g. the topic vanished while its broker was
replaced by an empty one) starts a join: the listener revokes the partitions, heartbeats stop, the
member is REBALANCING. If the metadata is back as it was before the join ends (the topic made again
with as many partitions), ``need_rejoin()`` is False again, nobody awaits the join task, its
assignment is never applied: the member stays REBALANCING with its partitions revoked (the source
holds their records back) and no heartbeat, for good. ``install_join_fix()`` makes
``BaseCoordinator.need_rejoin`` also true while a join is pending (``rejoining``: partitions
revoked and not yet reassigned, or a join task not yet collected), as the Java client's
``rejoinNeededOrPending()`` does.
"""
from __future__ import annotations

from kafka.coordinator.base import BaseCoordinator
from kafka.structs import MemberState


def install_join_fix() -> None:
    original = BaseCoordinator.join_group_async
    if getattr(original, "streamd_fix", False):
        return

    def need_rejoin(self):
        return bool(self.rejoin_needed or self.rejoining or self._join_task is not None)

    async def join_group_async(self, timeout_ms=None):
        task = self._join_task
        if task is not None and task.succeeded() and self.need_rejoin():
            self._join_task = None
            with self._lock:
                self.rejoining = False
                self.rejoin_needed = False
                self.state = MemberState.STABLE
                self._enable_heartbeat()
            generation = self._generation
            await self._on_join_complete_async(generation.generation_id, generation.member_id, generation.protocol,
                                               task.value)
        return await original(self, timeout_ms=timeout_ms)

    join_group_async.streamd_fix = True
    BaseCoordinator.join_group_async = join_group_async
    BaseCoordinator.need_rejoin = need_rejoin
