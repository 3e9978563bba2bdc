"""Reading JSON Lines files that another process is appending to."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)


class JsonlFollower:
    """Returns the objects appended to a JSON Lines file since the last read.

    A line without its newline yet is left for the next read, so a reader never
    parses half a record. A line that is not a JSON object is skipped and
    counted in `skipped_lines`. When the file shrinks or is replaced (a new
    inode), reading starts again from its beginning and `restarted` is set.
    """

    def __init__(self, path: str):
        self.path = path
        self.skipped_lines = 0
        self.restarted = False
        self._offset = 0
        self._inode: int | None = None

    def read_new(self) -> list[dict[str, Any]]:
        """Returns the complete records added since the previous call ([] when the file is absent)."""
        self.restarted = False
        try:
            with open(self.path, "rb") as stream:
                info = os.fstat(stream.fileno())
                if self._inode is not None and (info.st_ino != self._inode or info.st_size < self._offset):
                    self._offset = 0
                    self.restarted = True
                self._inode = info.st_ino
                stream.seek(self._offset)
                data = stream.read()
        except FileNotFoundError:
            return []

        end = data.rfind(b"\n") + 1
        self._offset += end
        records = []
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            record = _parse_line(line)
            if record is None:
                self.skipped_lines += 1
                logger.warning("Skipped a line of %s that is not a JSON object: %r", self.path, line[:200])
                continue
            records.append(record)
        return records


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Returns every complete JSON object line of `path` ([] when the file is absent)."""
    return JsonlFollower(path).read_new()


def _parse_line(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
