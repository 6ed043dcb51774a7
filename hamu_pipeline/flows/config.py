"""The deletion-batch flow's parameters, re-exported: :class:`BatchConfig` lives in
:mod:`hamu_pipeline.tasks.config`, where
the tasks that read it can import it."""

from hamu_pipeline.tasks.config import BatchConfig

__all__ = ["BatchConfig"]
