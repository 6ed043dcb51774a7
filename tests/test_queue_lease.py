"""Claims carry a lease: a heartbeat renews it, an expired one is released and can be claimed again, and a
batch that lost its lease can no longer close its requests. Two workers on one PostgreSQL queue never
handle a request twice.

Real databases: a SQLite file, and a throwaway PostgreSQL server (``postgres_url`` in conftest.py; skipped
with the reason where none can run). The clock is injected and moved by hand: nothing sleeps.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hamu.governance.requests import DEFAULT_LEASE, LeaseLostError, RequestQueue, Status
from hamu_pipeline.tasks.lease import LeaseKeeper, keep_lease

T0 = datetime(2026, 3, 1, tzinfo=UTC)
HEADER = "request_id,record_id,reason,received_at"


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'requests.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


def submit(queue: RequestQueue, folder: Path, n: int, prefix: str = "r") -> list[str]:
    lines = [
        f"{prefix}-{i},rec-{prefix}-{i},privacy,2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z" for i in range(n)
    ]
    path = folder / f"{prefix}.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    return list(queue.submit_file(path).request_ids)


def accept(queue: RequestQueue, batch_id: str, ids: list[str]) -> None:
    queue.record_verdicts(batch_id, {r: ("accepted", "in the manifest") for r in ids})


def test_a_heartbeat_extends_the_lease(url: str, clock: Clock, tmp_path: Path) -> None:
    with RequestQueue(url, clock=clock) as queue:
        ids = submit(queue, tmp_path, 2)
        claimed = queue.claim_batch("b-1")
        assert {r.lease_expires_at for r in claimed} == {T0 + DEFAULT_LEASE}
        clock.advance(minutes=10)
        assert queue.heartbeat("b-1") == T0 + timedelta(minutes=25)
        assert queue.heartbeat("b-1", claimed[0].claim_token) == T0 + timedelta(minutes=25)
        clock.advance(minutes=10)  # past the claim's own lease, inside the renewed one
        assert queue.release_expired() == {}
        assert {r.lease_expires_at for r in queue.list(Status.CLAIMED)} == {T0 + timedelta(minutes=25)}
        accept(queue, "b-1", ids)
        assert queue.mark_unlearned("b-1", ids, "models:/m/2") == 2
        assert queue.heartbeat("b-1") is None  # every request closed: nothing left to hold, no error


def test_an_expired_lease_is_released_reclaimable_and_its_old_owner_cannot_close(
    url: str, clock: Clock, tmp_path: Path
) -> None:
    """The old owner (a stalled process) and recovery elsewhere are two queue objects, two engines."""
    with RequestQueue(url, clock=clock) as stalled, RequestQueue(url, clock=clock) as other:
        ids = submit(stalled, tmp_path, 3)
        assert len(stalled.claim_batch("b-1")) == 3
        accept(stalled, "b-1", ids)
        clock.advance(minutes=14)
        assert other.claim_batch("b-2") == []
        assert other.release_expired() == {}  # still live
        clock.advance(minutes=2)

        with pytest.raises(LeaseLostError, match="expired at 2026-03-01T00:15:00"):
            stalled.mark_unlearned("b-1", ids, "models:/m/2")
        with pytest.raises(LeaseLostError, match="not renewed"):
            stalled.heartbeat("b-1")  # an expired lease is final
        assert [r.status for r in other.list()] == [Status.CLAIMED] * 3  # the refused close changed nothing

        assert other.release_expired() == {"b-1": 3}
        released = other.list()
        assert [r.status for r in released] == [Status.PENDING] * 3
        assert {(r.failures, r.verdict, r.batch_id, r.lease_expires_at) for r in released} == {
            (0, None, None, None)
        }
        assert other.release_expired() == {}

        # The same batch ID run again elsewhere takes them; the stalled run's token is not its.
        again = other.claim_batch("b-1")
        assert [r.request_id for r in again] == ids
        accept(other, "b-1", ids)
        with pytest.raises(LeaseLostError, match="claimed again under the same batch ID"):
            stalled.mark_unlearned("b-1", ids, "models:/m/2")
        with pytest.raises(LeaseLostError, match="holds no claims under its token"):
            stalled.heartbeat("b-1")
        assert stalled.release_batch("b-1") == 0  # its failure handler cannot release the new run's claims
        assert other.mark_unlearned("b-1", ids, "models:/m/3") == 3
        assert {r.model_version for r in other.list(Status.UNLEARNED)} == {"models:/m/3"}


def test_release_expired_spares_live_leases_and_claims_older_than_leases(
    url: str, clock: Clock, tmp_path: Path
) -> None:
    from sqlalchemy import create_engine, text

    with RequestQueue(url, clock=clock) as queue:
        submit(queue, tmp_path, 3)
        queue.claim_batch("b-old", limit=1)
        queue.claim_batch("b-1", limit=1)
        clock.advance(minutes=10)
        queue.claim_batch("b-2", limit=1)
        engine = create_engine(url)
        with engine.begin() as conn:  # a claim made before leases existed
            conn.execute(
                text("UPDATE deletion_requests SET lease_expires_at = NULL WHERE batch_id = 'b-old'")
            )
        engine.dispose()
        clock.advance(minutes=10)
        assert queue.release_expired() == {"b-1": 1}
        assert {r.batch_id for r in queue.list(Status.CLAIMED)} == {"b-old", "b-2"}
        assert queue.release_expired(now=T0 + timedelta(days=1)) == {"b-2": 1}


def test_a_close_rechecks_ownership_in_its_own_update(
    postgres_url: str, clock: Clock, tmp_path: Path
) -> None:
    """Recovery commits a release between the close's read check and its UPDATE: the UPDATE's WHERE sees the
    released rows (PostgreSQL re-reads them), changes fewer than asked, and the whole close rolls back."""
    with RequestQueue(postgres_url, clock=clock) as owner, RequestQueue(postgres_url, clock=clock) as other:
        ids = submit(owner, tmp_path, 2)
        owner.claim_batch("b-1")
        accept(owner, "b-1", ids)
        checked = owner._require_held

        def release_after_the_check(*args: object, **kwargs: object) -> None:
            checked(*args, **kwargs)  # type: ignore[arg-type]
            assert other.release_expired(now=T0 + timedelta(days=1)) == {"b-1": 2}

        owner._require_held = release_after_the_check  # type: ignore[method-assign]
        with pytest.raises(LeaseLostError, match="lost 2 of 2 claim"):
            owner.mark_unlearned("b-1", ids, "models:/m/2")
        assert [r.status for r in other.list()] == [Status.PENDING] * 2


def _work_off(url: str, clock: Clock, name: str, start: threading.Barrier, took: list[list[str]]) -> None:
    """One worker: claim a few, close them, repeat until nothing is left."""
    with RequestQueue(url, clock=clock) as queue:
        start.wait()
        for n in range(1000):
            batch = f"{name}-{n}"
            claimed = [r.request_id for r in queue.claim_batch(batch, limit=5)]
            if not claimed:
                return
            took.append(claimed)
            accept(queue, batch, claimed)
            assert queue.mark_unlearned(batch, claimed, f"models:/m/{name}") == len(claimed)


def test_two_workers_on_one_postgresql_queue_never_take_a_request_twice(
    postgres_url: str, clock: Clock, tmp_path: Path
) -> None:
    with RequestQueue(postgres_url, clock=clock) as queue:
        ids = submit(queue, tmp_path, 300)
    start = threading.Barrier(2)
    took: dict[str, list[list[str]]] = {"w1": [], "w2": []}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            _work_off(postgres_url, clock, name, start, took[name])
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(name,)) for name in took]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not errors, errors
    claims = [c for name in took for c in took[name]]
    assert all(1 <= len(c) <= 5 for c in claims)  # the limit held for every claim
    handled = [r for c in claims for r in c]
    assert sorted(handled) == sorted(ids)  # every request handled, none twice
    assert all(took.values())  # both workers got work (the claims interleaved)
    with RequestQueue(postgres_url, clock=clock) as queue:
        assert queue.counts()["unlearned"] == 300
        by_worker = {r.request_id: r.model_version for r in queue.list()}
    assert {r for r, v in by_worker.items() if v == "models:/m/w1"} == {r for c in took["w1"] for r in c}


# --------------------------------------------------------------------------- the flow's lease keeper


def test_the_keeper_renews_every_third_of_the_lease(tmp_path: Path, clock: Clock) -> None:
    with RequestQueue(f"sqlite:///{tmp_path / 'q.db'}", clock=clock) as queue:
        ids = submit(queue, tmp_path, 2)
        queue.claim_batch("b-1")
        waits: list[float] = []

        def wait(seconds: float) -> bool:  # stands in for the stop event's wait: four periods, then stop
            waits.append(seconds)
            clock.advance(seconds=seconds)
            return len(waits) > 4

        keeper = LeaseKeeper(queue, "b-1", wait=wait)
        keeper._run()
        assert waits == [300.0] * 5  # DEFAULT_LEASE / 3
        assert keeper.renewed_until == T0 + timedelta(minutes=20) + DEFAULT_LEASE and keeper.lost is None
        clock.advance(minutes=9)  # 34 minutes after the claim, far past its first lease
        assert queue.release_expired() == {}
        accept(queue, "b-1", ids)
        assert queue.mark_unlearned("b-1", ids, "models:/m/2") == 2
        assert keeper.beat() is False and keeper.lost is None  # done: nothing to renew, nothing lost


def test_the_keeper_stops_and_reports_a_lost_lease(tmp_path: Path, clock: Clock) -> None:
    with RequestQueue(f"sqlite:///{tmp_path / 'q.db'}", clock=clock) as queue:
        submit(queue, tmp_path, 1)
        queue.claim_batch("b-1")
        keeper = LeaseKeeper(queue, "b-1", wait=lambda s: clock.advance(minutes=16) or False)
        keeper._run()  # one wait that outlasts the lease, one failed renewal, and the loop ends by itself
        assert isinstance(keeper.lost, LeaseLostError)


def test_keep_lease_runs_a_thread_and_stops_it(tmp_path: Path, clock: Clock) -> None:
    with RequestQueue(f"sqlite:///{tmp_path / 'q.db'}", clock=clock) as queue:
        submit(queue, tmp_path, 1)
        queue.claim_batch("b-1")
        with keep_lease(queue, "b-1") as keeper:
            thread = keeper._thread
            assert thread is not None and thread.is_alive() and keeper.interval == 300.0
        assert not thread.is_alive()  # stopped at once, without waiting out the interval


def test_heartbeat_needs_a_token_it_knows(tmp_path: Path, clock: Clock) -> None:
    with RequestQueue(f"sqlite:///{tmp_path / 'q.db'}", clock=clock) as queue:
        with pytest.raises(ValueError, match="claimed nothing for batch 'b-9'"):
            queue.heartbeat("b-9")
        with pytest.raises(LeaseLostError):
            queue.heartbeat("b-9", "0" * 32)
