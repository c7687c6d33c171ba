"""What a study has finished: the state file in its output directory.

`state.json` records, per planned phase (keyed by its fingerprint, see
plan.py), the trainer run that produced it, its final checkpoint URI and
lineage, and its evaluation results; and the judge's win rates. It is
rewritten atomically (temporary file, fsync, rename) after every finished
step, so a runner killed at any moment leaves either the old or the new
state, never half of one, and a runner started again skips what is recorded.
The output directory is a local path or a gs:// URI: every read and write
goes through libs/storage (on GCS an object is replaced whole, atomically).

The loss curves of each run (the trainer's metrics events) go to
`curves/<run_id>.jsonl` beside it; they are rewritten whole from the
trainer's replayed event log each time a run is watched.
"""

from __future__ import annotations

import json
import threading
import time

from libs import storage

FORMAT = "code_lab.study_state/1"
STATE_FILE = "state.json"
CURVES_DIR = "curves"


class State:
    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.path = storage.join(out_dir, STATE_FILE)
        self._lock = threading.Lock()
        self.data = {"format": FORMAT, "phases": {}, "evals": {}, "judgements": {}, "sources": {}}
        if storage.exists(self.path):
            loaded = json.loads(storage.read_text(self.path))
            if loaded.get("format") != FORMAT:
                raise ValueError(f"{self.path}: unknown state format {loaded.get('format')!r}")
            self.data.update(loaded)

    # -- phases ----------------------------------------------------------------------

    def phase(self, fingerprint: str) -> dict | None:
        """The finished phase's record, or None."""
        with self._lock:
            return self.data["phases"].get(fingerprint)

    def finish_phase(self, fingerprint: str, record: dict) -> None:
        with self._lock:
            self.data["phases"][fingerprint] = {**record, "finished_at": time.time()}
            self._save()

    # -- evaluations -----------------------------------------------------------------

    def evaluation(self, fingerprint: str, settings: str) -> dict | None:
        with self._lock:
            record = self.data["evals"].get(fingerprint)
            return record if record and record.get("settings") == settings else None

    def finish_evaluation(self, fingerprint: str, settings: str, record: dict) -> None:
        with self._lock:
            self.data["evals"][fingerprint] = {
                **record,
                "settings": settings,
                "finished_at": time.time(),
            }
            self._save()

    # -- judgements ------------------------------------------------------------------

    def judgement(self, key: str) -> dict | None:
        with self._lock:
            return self.data["judgements"].get(key)

    def finish_judgement(self, key: str, record: dict) -> None:
        with self._lock:
            self.data["judgements"][key] = {**record, "finished_at": time.time()}
            self._save()

    # -- corpus facts ----------------------------------------------------------------

    def sources(self) -> dict[str, str]:
        """Source name -> data kind, as the data service reported them."""
        with self._lock:
            return dict(self.data["sources"])

    def set_sources(self, kinds: dict[str, str]) -> None:
        with self._lock:
            if self.data["sources"] != kinds:
                self.data["sources"] = dict(kinds)
                self._save()

    # -- curves ----------------------------------------------------------------------

    def curves_path(self, run_id: str) -> str:
        return storage.join(self.out_dir, CURVES_DIR, f"{run_id}.jsonl")

    def write_curves(self, run_id: str, records: list[dict]) -> None:
        storage.write_text(
            self.curves_path(run_id), "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        )

    def read_curves(self, run_id: str) -> list[dict]:
        path = self.curves_path(run_id)
        if not storage.exists(path):
            return []
        return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]

    def _save(self) -> None:
        storage.write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")
