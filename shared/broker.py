"""kombu's Redis transport with one Redis client per channel instead of one per operation.

kombu's `Channel.conn_or_acquire` builds a new `redis.Redis` object for every publish and for
both halves of the acks-late bookkeeping (`QoS.append` at delivery, `QoS.ack` after the task),
and building one costs ~0.2 ms of CPU (redis-py copies its table of response callbacks each
time): three to four per AI job, in the worker's consumer thread, under the GIL the job threads
need. A client is only a handle on the channel's connection pool and is thread-safe, so one per
channel is equivalent; the pool, connections and commands are kombu's own.

Selected with Celery's `broker_transport` setting (shared/jobs.py); the broker URL stays an
ordinary `redis://` URL.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _shared_client: redis.Redis | None = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        client = self._shared_client
        if client is None:
            client = self._shared_client = super()._create_client()  # type: ignore[misc]
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
