"""A run's event log: metrics, committed checkpoints and status changes.

Events are numbered from 0 without gaps, appended to `events.jsonl` in the
run directory (so a restarted trainer replays them to late watchers), and
handed to live watchers as they happen.
"""

from __future__ import annotations

import threading
from typing import Iterator

from google.protobuf import json_format

from libs import storage
from proto import trainer_pb2


class EventLog:
    def __init__(self, run_id: str, path: str | None = None):
        self.run_id = run_id
        self._path = path
        self._events: list[trainer_pb2.RunEvent] = []
        self._closed = False
        self._cond = threading.Condition()
        if path and storage.exists(path):  # a local path or a gs:// URI
            with storage.open(path) as f:
                for line in f:
                    if line.strip():
                        self._events.append(json_format.Parse(line, trainer_pb2.RunEvent()))
        self._file = storage.open(path, "a") if path else None

    def append(self, **event) -> trainer_pb2.RunEvent:
        """Records one event: append(metrics=...), (checkpoint=...) or (status=...)."""
        with self._cond:
            message = trainer_pb2.RunEvent(sequence=len(self._events), run_id=self.run_id, **event)
            self._events.append(message)
            if self._file:
                self._file.write(json_format.MessageToJson(message, indent=None) + "\n")
                self._file.flush()
            self._cond.notify_all()
            return message

    def close(self) -> None:
        """No more events: watchers finish once they have read everything."""
        with self._cond:
            self._closed = True
            if self._file:
                self._file.close()
                self._file = None
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False
            if self._path and self._file is None:
                self._file = storage.open(self._path, "a")

    def events(self) -> list[trainer_pb2.RunEvent]:
        with self._cond:
            return list(self._events)

    def watch(
        self, from_sequence: int = 0, *, poll_s: float = 0.5, cancelled=lambda: False
    ) -> Iterator[trainer_pb2.RunEvent]:
        """Yields events from `from_sequence` on, live, until the log closes."""
        next_seq = max(from_sequence, 0)
        while True:
            with self._cond:
                while next_seq >= len(self._events) and not self._closed and not cancelled():
                    self._cond.wait(poll_s)
                batch = self._events[next_seq:]
                done = self._closed or cancelled()
            for event in batch:
                yield event
            next_seq += len(batch)
            if done and next_seq >= len(self.events()):
                return
