"""The broker's time-driven work: heartbeats, silent and stalled peers, the pool's exits.

Once a heartbeat, the broker sends every peer a HEARTBEAT and drops those it
has not heard from for ``heartbeat x liveness`` (a client's tasks are cancelled,
a worker's go back to the queue), remote workers that sit on tasks without
starting any (``STALL_BEATS``), peers that stop reading what they are owed
(``backlog.py``) and peers whose key was revoked.  More often (every 0.1 s) it
reaps its pool's exited workers and ticks the fleet of launched ones.
"""

from __future__ import annotations

import time

from ..wire import largebuf
from ..wire.protocol import Kind
from ..worker.containment import exit_words
from .backlog import MAX_BACKLOG
from .records import WorkerState

STALL_BEATS = 10  # heartbeats a remote worker may hold tasks without starting any, unless it is preparing


class Housekeeping:
    """The broker's part that runs on the clock (a mixin of ``Broker``)."""

    def housekeeping(self) -> None:
        """Reap the pool; every heartbeat, send heartbeats and drop silent or stalled peers."""
        now = time.monotonic()
        if now - self.last_reap >= 0.1:
            self.last_reap = now
            if self.pool:
                self.reap_pool()
            if self.status_sock is not None:
                self.serve_status_socket()  # an executor's status socket: polled, not in the loop's poll
        if self.fleet:
            self.fleet.tick(self, now)
        if self.queue.count:
            self.unplaced.review(self, now)
        if now - self.last_beat < self.heartbeat:
            return
        self.last_beat = now
        self.sample_rates(now)
        largebuf.trim(now)  # large buffers kept for reuse, unused for a while: let go
        limit = self.heartbeat * self.liveness
        for w in self.workers.values():
            self.send(self.workers_sock, w.ident, Kind.HEARTBEAT)
        for c in list(self.clients.values()):
            # The embedded broker shares its client's process: silence there means
            # a busy interpreter (the GIL held), not a dead client.
            if now - c.last_seen > limit and not self.embedded:
                self.log(f"client {c.ident!r} went silent; dropping its tasks")
                self.client_gone(c)
            else:
                self.send(self.clients_sock, c.ident, Kind.HEARTBEAT)
        for w in list(self.workers.values()):
            # Workers' supervisors never run user code, so silence means the
            # process or its host is gone (or stopped), busy or not.
            if now - w.last_seen > limit:
                self.worker_gone(w, f"worker {w.name} (pid {w.pid} on {w.host}) went silent for {limit:g} s")
                if self.pool and w.pid in self.pool.procs:
                    self.pool.kill(w.pid)  # hung or stopped: make room for a replacement
            elif self.stalled(w, now):
                stall = self.heartbeat * STALL_BEATS
                self.refuse(self.workers_sock, w.ident, w, f"it held {len(w.assigned)} task(s) for {stall:g} s "
                                                           "without starting any; they go to other workers")
                self.worker_gone(w, None)  # its tasks never started: back to the queue, no attempt counted
        if self.backlogs:
            self.drop_unread(now, limit)
        if self.guard.keys is not None:
            self.drop_revoked()
        self.told_unknown = {ident: t for ident, t in self.told_unknown.items() if now - t < self.heartbeat}
        self.complain.tick()

    def excuse_silence(self, now: float) -> None:
        """The broker left its peers' messages unread while it spilled: none of them counts as silent
        for that time (their heartbeats wait behind the tasks a client sent)."""
        for peer in (*self.clients.values(), *self.workers.values()):
            peer.last_seen = now

    def drop_unread(self, now: float, limit: float) -> None:
        """Drop the peers that have not read what they are owed for ``limit`` seconds, or owe too
        much (``backlog.py``): a client as a silent one, a worker as a lost one."""
        for ident in self.backlogs.overdue(now, limit):
            owed = self.backlogs.drop(ident)
            c, w = self.clients.get(ident), self.workers.get(ident)
            why = f"it left {owed} message(s) unread (a peer may leave {MAX_BACKLOG} for {limit:g} s)"
            if c is not None:
                self.log(f"client {ident!r} stopped reading: {why}; dropping its tasks")
                self.client_gone(c)
            elif w is not None:
                self.worker_gone(w, f"worker {w.name} (pid {w.pid} on {w.host}) stopped reading: {why}")
                if self.pool and w.pid in self.pool.procs:
                    self.pool.kill(w.pid)

    def stalled(self, w: WorkerState, now: float) -> bool:
        """Does a remote worker sit on tasks it received, none of them begun, while it reports
        no progress (a worker busy with a long task has begun it; one preparing says so)?"""
        if w.paired or not w.assigned or now - w.progress_at <= self.heartbeat * STALL_BEATS:
            return False
        return not any(self.tasks[gid].started for gid in w.assigned if gid in self.tasks)

    def reap_pool(self) -> None:
        """Workers of the pool that exited are lost (their tasks go back); start others if work waits."""
        for exited in self.pool.reap():
            for w in list(self.workers.values()):
                if w.pid == exited.pid:
                    how = exit_words(exited.returncode)
                    self.worker_gone(w, f"worker {w.name} (pid {w.pid} on {w.host}) {how}")
        # Replace workers on demand: one that left when idle (idle_timeout) comes
        # back only when there is work for it.
        if self.queue:
            self.pool.fill()
