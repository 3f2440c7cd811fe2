"""Background work on QThreads: loading a run, auditing it, building one row. No widget is touched here."""

from app.workers.jobs import JobChannel, Superseded

__all__ = ["JobChannel", "Superseded"]
