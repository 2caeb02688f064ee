"""A fix for kafka-python's group join (checked against 3.0.12): a finished join is used, not thrown away.

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
"""
from __future__ import annotations

from kafka.coordinator.base import BaseCoordinator
from kafka.structs import MemberState


def install_join_fix() -> None:
    original = BaseCoordinator.join_group_async
    if getattr(original, "streamd_fix", False):
        return

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
