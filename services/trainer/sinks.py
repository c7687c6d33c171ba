"""Where a run's metrics go: one `Sink` interface, one class per destination.

The training loop hands every logged trainer_pb2.Metrics record to each sink of its list
and knows nothing of files, TensorBoard or terminals. Only the primary process has sinks.
"""

from __future__ import annotations

from typing import Protocol

from google.protobuf import json_format

from libs import storage
from proto import trainer_pb2
from services.trainer.events import EventLog


class Sink(Protocol):
    def write(self, record: trainer_pb2.Metrics, *, step: int, total_steps: int) -> None: ...

    def close(self) -> None: ...


def to_json(message) -> str:
    return json_format.MessageToJson(message, indent=None, preserving_proto_field_name=True)


class EventSink:
    """Metrics as run events, which WatchRun streams."""

    def __init__(self, events: EventLog):
        self._events = events

    def write(self, record, *, step, total_steps):
        self._events.append(metrics=record)

    def close(self):
        pass


class JsonlSink:
    """One JSON object a line, appended (a resumed run appends to the same file)."""

    def __init__(self, path: str):
        self._file = storage.open(path, "a")

    def write(self, record, *, step, total_steps):
        self._file.write(to_json(record) + "\n")
        self._file.flush()

    def close(self):
        self._file.close()


class TensorBoardSink:
    """TensorBoard event files (tensorboardX: no TensorFlow), opened on first write."""

    def __init__(self, directory: str):
        self._directory = directory
        self._writer = None

    def write(self, record, *, step, total_steps):
        if self._writer is None:
            if storage.is_gcs(self._directory):
                storage.prepare_gcs()  # tensorboardX writes gs:// with the GCS client
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(self._directory)
        add = self._writer.add_scalar
        add("loss/all", record.loss, record.step)
        for name, value in record.source_loss.items():
            add(f"loss/{name}", value, record.step)
        add("train/learning_rate", record.learning_rate, record.step)
        add("train/grad_norm", record.grad_norm, record.step)
        add("perf/tokens_per_second", record.tokens_per_second, record.step)
        add("perf/mfu", record.mfu, record.step)

    def close(self):
        if self._writer is not None:
            self._writer.close()


class ConsoleSink:
    """A progress line a record: bar, ETA, losses per source, learning rate, speed."""

    def __init__(self, tokens_per_step: int):
        self._tokens_per_step = tokens_per_step

    def write(self, record, *, step, total_steps):
        per_source = " ".join(f"{k}={v:.3f}" for k, v in sorted(record.source_loss.items()))
        remaining_s = (
            (total_steps - step) * self._tokens_per_step / max(record.tokens_per_second, 1e-9)
        )
        print(
            f"{progress_bar(step, total_steps)} eta {duration(remaining_s)} "
            f"{record.phase:<10} loss {record.loss:.4f} "
            f"({per_source}) lr {record.learning_rate:.2e} gnorm {record.grad_norm:.2f} "
            f"{record.tokens_per_second / 1e3:.1f}k tok/s MFU {record.mfu:.2f}",
            flush=True,
        )

    def close(self):
        pass


def default_sinks(run_dir: str, events: EventLog, *, console: bool, tokens_per_step: int):
    """The sinks of a trainer run: events, metrics.jsonl, TensorBoard, and the console."""
    sinks = [
        EventSink(events),
        JsonlSink(storage.join(run_dir, "metrics.jsonl")),
        TensorBoardSink(storage.join(run_dir, "tensorboard")),
    ]
    if console:
        sinks.append(ConsoleSink(tokens_per_step))
    return sinks


def progress_bar(step: int, total: int, width: int = 20) -> str:
    """`[######--------------]  123/440` for a console line."""
    done = int(width * step / max(total, 1))
    return f"[{'#' * done}{'-' * (width - done)}] {step:>5}/{total}"


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"
