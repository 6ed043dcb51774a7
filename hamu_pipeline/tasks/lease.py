"""Keep a batch's claims while it runs: a background thread renews their lease in the queue.

The queue gives every claim a lease (``RequestQueue.lease``, 15 minutes by default); recovery on any host
releases claims whose lease expired (``RequestQueue.release_expired``). A running batch therefore renews
its lease every third of that, so that two missed renewals (a database failover, a stalled mount) still
leave it its claims. The ``flock`` of :mod:`hamu_pipeline.tasks.locks` stays the liveness test on one host;
the lease is
what another host, or a pod with its own ``work/``, can see.

A lost lease (expired, or the claims released) is final: the thread logs it and stops, and the batch's
close is then refused by the queue (:class:`~hamu.governance.requests.LeaseLostError`), so it cannot report
requests
that another batch may be handling. The thread never kills the batch itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

from hamu.governance.requests import LeaseLostError, RequestQueue

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews ``batch_id``'s lease through ``queue`` every ``interval`` seconds until stopped.

    ``interval`` defaults to a third of the queue's lease. ``wait(seconds)`` is how the thread waits between
    renewals and returns True once it should stop; tests inject one to drive the loop without sleeping.
    """

    def __init__(
        self,
        queue: RequestQueue,
        batch_id: str,
        *,
        interval: float | None = None,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        self.queue = queue
        self.batch_id = batch_id
        self.interval = queue.lease.total_seconds() / 3 if interval is None else interval
        if self.interval <= 0:
            raise ValueError(f"interval must be positive, got {self.interval!r}")
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._thread: threading.Thread | None = None
        self.lost: LeaseLostError | None = None
        self.renewed_until: datetime | None = None

    def beat(self) -> bool:
        """Renew once; False once the lease is lost (recorded in :attr:`lost`) or nothing is left to hold.

        Any other error (the database unreachable for a moment) is logged and retried at the next beat:
        the lease outlives two missed renewals.
        """
        try:
            expires = self.queue.heartbeat(self.batch_id)
        except LeaseLostError as exc:
            self.lost = exc
            log.error("batch %s lost its claims; it can no longer close them: %s", self.batch_id, exc)
            return False
        except Exception:
            log.warning(
                "batch %s: lease renewal failed, retrying in %.0fs",
                self.batch_id,
                self.interval,
                exc_info=True,
            )
            return True
        if expires is None:
            return False  # every claimed request is closed: nothing left to renew
        self.renewed_until = expires
        return True

    def _run(self) -> None:
        while not self._wait(self.interval) and not self._stop.is_set():
            if not self.beat():
                return

    def start(self) -> LeaseKeeper:
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.batch_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


@contextmanager
def keep_lease(queue: RequestQueue, batch_id: str, *, interval: float | None = None) -> Iterator[LeaseKeeper]:
    """Renew ``batch_id``'s lease in the background while the block runs (see :class:`LeaseKeeper`)."""
    keeper = LeaseKeeper(queue, batch_id, interval=interval).start()
    try:
        yield keeper
    finally:
        keeper.stop()
