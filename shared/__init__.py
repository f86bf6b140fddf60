"""The project's common package: what every SIPAS service is built from.

Services import ``shared``; they never import each other. Each module here has one job:
settings, db, events (envelope and contracts), bus (in-process and RabbitMQ), outbox/inbox,
errors (RFC 9457), auth (API keys and roles), observability (logs, metrics, correlation ids),
and service (the common FastAPI app factory every service uses).
"""
