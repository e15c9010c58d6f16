"""Webhooks: administrators register endpoints for event types; the delivery process
(`python -m services.chat.webhooks`) turns each event of the stream into a delivery per matching
endpoint and sends it, signed (Standard Webhooks), retried with backoff, dead after N attempts.

Modules: `signing` (secrets and signatures), `queue` (the deliveries in Postgres: enqueue, claim,
record), `sender` (one HTTP attempt and the retry schedule), `process` (the process itself),
`service` (the admin API's logic, used by the chat service's routes).
"""
