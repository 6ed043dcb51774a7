"""The deletion-batch flow's parameters, re-exported: :class:`BatchConfig` lives in :mod:`tasks.config`, where
the tasks that read it can import it."""

from tasks.config import BatchConfig

__all__ = ["BatchConfig"]
