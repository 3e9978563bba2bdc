"""The file lease against the leader-election contract, plus its lock and file errors."""

from __future__ import annotations

import fcntl
import os

import pytest

from lease_contract import FakeClock, LeaseContract
from tfps_ha.lease import LeaseError
from tfps_ha.lease.file import FileLease


class TestFileLease(LeaseContract):

    @pytest.fixture
    def new_backend(self, clock, tmp_path):
        path = str(tmp_path / "leader.lease")
        return lambda: FileLease(path, clock=clock)


def test_lock_timeout_names_lock(tmp_path):
    path = str(tmp_path / "leader.lease")
    holder = os.open(path + ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        lease = FileLease(path, lock_timeout_seconds=0.2, clock=FakeClock())
        with pytest.raises(LeaseError, match="leader.lease.lock"):
            lease.try_acquire("a", 4.0)
    finally:
        os.close(holder)


def test_corrupt_file_raises(tmp_path):
    path = tmp_path / "leader.lease"
    path.write_text("{not json")

    with pytest.raises(LeaseError, match="not valid JSON"):
        FileLease(str(path)).read()


def test_record_missing_field_raises(tmp_path):
    path = tmp_path / "leader.lease"
    path.write_text('{"holder": "a"}')

    with pytest.raises(LeaseError, match="invalid lease record"):
        FileLease(str(path)).read()
