"""The AI worker's /healthz and /readyz (served with its metrics, shared/probe_server.py).

- **Alive**: the Celery consumer started (`worker_ready`) and its event loop keeps turning: a
  timer on the consumer's own loop beats every few seconds, so a loop that is wedged (or that
  has been reconnecting to the broker for over a minute) stops beating; and the job sweeper's
  thread runs and sweeps on schedule. During a warm shutdown the consumer stops on purpose and
  counts as alive while the running jobs finish.
- **Ready**: the consumer is running (not starting, not shutting down), and Redis (the broker)
  and Postgres answer.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import signals

from shared.probe_server import OK, Heartbeat

# How often the consumer's event loop beats; well under the heartbeat's stall limit.
BEAT_SECONDS = 5.0


class ConsumerProbe:
    """What the Celery signals tell about the worker's consumer."""

    def __init__(self) -> None:
        self.heartbeat = Heartbeat()
        self._ready = threading.Event()
        self._stopping = threading.Event()

    def connect(self) -> None:
        """Listen to the worker's signals (call before the worker starts)."""
        signals.worker_ready.connect(self._on_ready, weak=False)
        signals.worker_shutting_down.connect(self._on_shutting_down, weak=False)

    def _on_ready(self, sender: Any = None, **_: Any) -> None:
        # The sender is the consumer; its timer is the event loop's own (kombu's hub timer), so
        # the beat runs only while the loop does. worker_ready is sent once per worker.
        self.heartbeat.beat()
        sender.timer.call_repeatedly(BEAT_SECONDS, self.heartbeat.beat)
        self._ready.set()

    def _on_shutting_down(self, **_: Any) -> None:
        self._stopping.set()

    def alive(self) -> str:
        if self._stopping.is_set():
            return OK  # finishing its jobs: a restart now would cut them short
        if not self._ready.is_set():
            return "starting"
        return self.heartbeat.check()

    def ready(self) -> str:
        if self._stopping.is_set():
            return "stopping"
        if not self._ready.is_set():
            return "starting"
        return self.heartbeat.check()
