"""Benchmarks: `make bench` (`python -m bench`).

`GET /chat/conversations` through the whole gateway path (gateway -> chat -> Postgres, with the
gateway's JWT check and Redis rate limit) next to the same query served by a bare single-process
FastAPI + asyncpg + orjson app, on one freshly seeded database of 100,000 conversations.
"""
