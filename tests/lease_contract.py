"""The leader-election contract every lease backend must pass.

A backend's test module subclasses `LeaseContract` and overrides the
`new_backend` fixture with a factory that returns a fresh client of one shared
store, whose clock is the `clock` fixture.
"""

from __future__ import annotations

import threading

import pytest

from tfps_ha.lease import LeadershipLostError

DURATION = 4.0


class FakeClock:
    """A wall clock that moves only when a test advances it."""

    def __init__(self, start: float = 1_700_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LeaseContract:
    """Tests of the contract in `tfps_ha.lease.base`."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def new_backend(self, clock):
        raise NotImplementedError("a backend's test class provides new_backend")

    def test_acquire_free_lease(self, new_backend, clock):
        backend = new_backend()
        assert backend.read() is None

        record = backend.try_acquire("a", DURATION)

        assert record is not None
        assert record.holder == "a"
        assert record.epoch == 1
        assert record.expires_at == clock.now + DURATION
        assert new_backend().read() == record

    def test_held_lease_rejects_other(self, new_backend, clock):
        new_backend().try_acquire("a", DURATION)
        clock.advance(DURATION - 0.5)

        assert new_backend().try_acquire("b", DURATION) is None
        assert new_backend().read().holder == "a"

    def test_holder_reacquires_same_epoch(self, new_backend):
        backend = new_backend()
        first = backend.try_acquire("a", DURATION)

        again = backend.try_acquire("a", DURATION)

        assert again.epoch == first.epoch

    def test_expired_lease_changes_epoch(self, new_backend, clock):
        new_backend().try_acquire("a", DURATION)
        clock.advance(DURATION)

        record = new_backend().try_acquire("b", DURATION)

        assert record.holder == "b"
        assert record.epoch == 2

    def test_renew_extends_expiry(self, new_backend, clock):
        backend = new_backend()
        record = backend.try_acquire("a", DURATION)
        clock.advance(3.0)

        renewed = backend.renew("a", record.epoch, DURATION)

        assert renewed.expires_at == clock.now + DURATION
        assert renewed.epoch == record.epoch
        clock.advance(3.0)
        assert new_backend().try_acquire("b", DURATION) is None

    def test_renew_after_takeover_raises(self, new_backend, clock):
        old = new_backend()
        record = old.try_acquire("a", DURATION)
        clock.advance(DURATION + 1)
        new_backend().try_acquire("b", DURATION)

        with pytest.raises(LeadershipLostError) as raised:
            old.renew("a", record.epoch, DURATION)

        assert raised.value.current.holder == "b"
        assert raised.value.current.epoch == record.epoch + 1

    def test_renew_after_own_expiry_raises(self, new_backend, clock):
        backend = new_backend()
        record = backend.try_acquire("a", DURATION)
        clock.advance(DURATION + 1)

        with pytest.raises(LeadershipLostError):
            backend.renew("a", record.epoch, DURATION)

    def test_check_passes_for_leader(self, new_backend, clock):
        backend = new_backend()
        record = backend.try_acquire("a", DURATION)
        clock.advance(1.0)

        assert backend.check("a", record.epoch, min_remaining_seconds=1.0) == record

    def test_check_fences_old_epoch(self, new_backend, clock):
        zombie = new_backend()
        record = zombie.try_acquire("a", DURATION)
        clock.advance(DURATION)
        new_backend().try_acquire("b", DURATION)

        with pytest.raises(LeadershipLostError) as raised:
            zombie.check("a", record.epoch)

        assert "epoch 1" in str(raised.value)
        assert "'b'" in str(raised.value)

    def test_check_requires_remaining_time(self, new_backend, clock):
        backend = new_backend()
        record = backend.try_acquire("a", DURATION)
        clock.advance(DURATION - 1.0)

        with pytest.raises(LeadershipLostError):
            backend.check("a", record.epoch, min_remaining_seconds=2.0)

    def test_release_frees_lease_now(self, new_backend):
        leader = new_backend()
        record = leader.try_acquire("a", DURATION)

        assert leader.release("a", record.epoch) is True

        taken = new_backend().try_acquire("b", DURATION)
        assert taken.holder == "b"
        assert taken.epoch == record.epoch + 1

    def test_release_by_other_is_noop(self, new_backend, clock):
        record = new_backend().try_acquire("a", DURATION)

        assert new_backend().release("b", record.epoch) is False
        assert new_backend().release("a", record.epoch + 5) is False
        assert new_backend().try_acquire("b", DURATION) is None

    def test_revoke_dead_holder(self, new_backend):
        new_backend().try_acquire("a", DURATION)

        assert new_backend().revoke("a") is True
        assert new_backend().revoke("a") is False
        assert new_backend().try_acquire("b", DURATION).epoch == 2

    def test_concurrent_acquire_one_winner(self, new_backend):
        barrier = threading.Barrier(8)
        winners = []

        def compete(name: str) -> None:
            backend = new_backend()
            barrier.wait(timeout=10)
            if backend.try_acquire(name, DURATION) is not None:
                winners.append(name)

        threads = [threading.Thread(target=compete, args=(f"c{i}",)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

        assert len(winners) == 1
        assert new_backend().read().holder == winners[0]
        assert new_backend().read().epoch == 1
