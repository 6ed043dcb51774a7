"""Errors raised by :mod:`hamu.data`, each carrying enough context for the person who has to act on it."""

from __future__ import annotations

from collections.abc import Sequence


class DataUnavailableError(RuntimeError):
    """A data source cannot be read here (missing package, offline hub); the message says how to get it."""


class UnknownRecordIDsError(ValueError):
    """Some requested record IDs are not in the dataset.

    A deletion batch that names records we never trained on must not be silently shrunk: the caller
    gets the count and the first few offenders (``missing`` holds them all).
    """

    def __init__(self, missing: Sequence[str], dataset: str, shown: int = 5) -> None:
        self.missing: tuple[str, ...] = tuple(missing)
        head = ", ".join(repr(m) for m in self.missing[:shown])
        more = f" (and {len(self.missing) - shown} more)" if len(self.missing) > shown else ""
        super().__init__(f"{len(self.missing)} record ID(s) are not in {dataset}: {head}{more}")


class InvalidSplitError(ValueError):
    """A forget/retain split that cannot be unlearned meaningfully (empty forget set, empty retain set...)."""
