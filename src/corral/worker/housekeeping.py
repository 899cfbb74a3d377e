"""A supervisor's time-driven work: heartbeats, its task's timers, idleness, its lifetime, its parent.

Once a turn of the loop, after the messages: a task's timeout or kill that
escalates (the mode's ``timers``), the output's flush, the end of an idle or
expired worker (``lifetime.py``), a HEARTBEAT when one is due (with the memory
it and its task processes use, about once a second), and a broker that went
silent (a standalone one: reconnect; the pool's own: leave).  Every heartbeat,
it reaps what tasks left behind (``containment.py``).
"""

from __future__ import annotations

import os
import time

from ..tuning import CGROUP_DELAY, PARENT_CHECK
from ..wire import largebuf
from ..wire.protocol import Kind


class Housekeeping:
    """The supervisor's part that runs on the clock (a mixin of ``Supervisor``)."""

    def housekeeping(self) -> bool:
        """Timeouts, heartbeats, idleness, the parent.  False: the broker is gone."""
        now = time.monotonic()
        if self.family.cgroup_wanted and now - self.started_at >= CGROUP_DELAY:
            self.family.enter_cgroup(self.own_processes())  # once: its task processes are born there then
        if now - self.last_sweep >= self.heartbeat:
            # Orphans of what tasks started come to us: reap those that exited (and stop them,
            # where a mode knows they belong to tasks that are over).
            self.last_sweep = now
            self.family.sweep(self.own_processes(), stop=self.stops_strays)
            largebuf.trim(now)  # large buffers kept for reuse, unused for a while: let go
        self.timers(now)
        if self.output is not None:
            self.output.timers(now)
        if self.parent_gone():
            self.stopping = True
            return True
        if self.idle_timeout and self.idle() and now - self.idle_since > self.idle_timeout and not self.leaving:
            self.begin_leaving("idle", now)
        self.check_lifetime(now)
        if self.stopping:
            return True
        if now - self.last_sent >= self.heartbeat or self.gauge.due(now):
            self.send(Kind.HEARTBEAT, self.beat(now))
        if not self.welcomed:
            self.note_waiting()
        if now - self.last_heard > self.heartbeat * self.liveness:
            if not self.reconnect_on_silence:  # started by a client's pool: the client and its broker are gone
                self.stopping = True
                return True
            if self.welcomed:
                self.say(f"the broker at {self.address} went silent; reconnecting")
                self.welcomed = False
            return False
        return True

    stops_strays = False  # our strays all belong to tasks that are over (fresh): stop them, not only reap

    def beat(self, now: float) -> dict | None:
        """A HEARTBEAT's body: whether we are preparing (see ``preparing``), and, about once a second, our
        memory and our task processes' (``memory.py``), for the broker's status."""
        body = {"preparing": True} if self.preparing() else {}
        if self.gauge.due(now):
            rss = self.gauge.measure(now)
            if rss is not None:
                body["rss"] = rss
        return body or None

    def parent_gone(self) -> bool:
        """Has the process that started us died?  Asked at most every PARENT_CHECK seconds."""
        if not self.parent_pid:
            return False
        now = time.monotonic()
        if now - self.parent_checked < PARENT_CHECK:
            return False
        self.parent_checked = now
        return os.getppid() != self.parent_pid
