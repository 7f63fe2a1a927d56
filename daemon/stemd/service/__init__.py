"""The daemon: `Service`, its lifecycle (startup -> main loop -> shutdown, signals,
reload), with intake from the watcher (`inbox`) and its signs of life
(`liveness`, a thread of its own) as objects it owns."""

from stemd.service.lifecycle import Service

__all__ = ["Service"]
