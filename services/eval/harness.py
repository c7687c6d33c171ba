"""The evaluation harness: what EvalService does, as a plain library.

`Harness` ties the pieces together: the task registry (tasks.py), checkpoint loading
with a small model cache (checkpoints.py), scoring (evaluator.py), the results
database (results_db.py), trainer following (follow.py) and judging (judge.py).

- `evaluate` scores one checkpoint and yields each task's result, then the aggregates.
  A task result already in the database for the same checkpoint and settings is reused
  (checkpoints are immutable once committed, and scoring is seeded); the settings
  include the task's `evaluator.scoring_fingerprint` (prompt format, stop strings,
  token limits, scoring code), so a change to any of them scores the task afresh.
- with a corpus that holds a held-out slice (`heldout_corpus_dir`), a suite evaluation
  also scores the per-source held-out bits per byte (heldout.py; task "heldout_bpb",
  which a request may also name among its tasks), after the tasks and before the
  aggregates, stored like a task under the corpus's held-out fingerprint; only for a
  checkpoint with the corpus's tokenizer (trained on it), others are skipped.
- `follow_run` evaluates every committed checkpoint of a trainer run once: a checkpoint
  is marked done in the database only after all its tasks are stored, and a restarted
  service skips done checkpoints (their results are not streamed again) and resumes a
  half-done one from its stored tasks. A checkpoint deleted before its turn (the
  trainer's keep policy) is recorded as "missing" and skipped.
- `compare` generates both checkpoints' answers to a prompt set and returns the
  judge's win rate of A over B.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterator, Optional, Sequence

from libs import errors
from services.eval import (
    checkpoints,
    code_exec,
    evaluator,
    follow,
    heldout,
    judge as judge_lib,
    tasks as tasks_lib,
)
from services.eval.results_db import ResultsDB, settings_key


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    name: str
    category: str
    metric: str
    num_examples: int
    kind: str
    description: str


@dataclasses.dataclass
class Scored:
    """A task or aggregate result of one checkpoint, with the checkpoint's step."""

    checkpoint_uri: str
    step: int
    result: evaluator.TaskResult


@dataclasses.dataclass(frozen=True)
class JudgeSpec:
    """Which judge a comparison uses: an OpenAI-compatible endpoint or a checkpoint."""

    openai_base_url: str = ""
    openai_model: str = ""
    openai_api_key_env: str = ""
    checkpoint_uri: str = ""

    @property
    def is_set(self) -> bool:
        return bool(self.openai_base_url or self.checkpoint_uri)


Loader = Callable[[str], checkpoints.LoadedCheckpoint]


class Harness:
    """The service's operations over a results database and a checkpoint loader.

    loader: URI -> LoadedCheckpoint (default: libs/checkpoint); tests pass in-memory ones.
    source: task data from "local" files or the Hugging Face "hub".
    heldout_corpus_dir: a services/data corpus whose held-out slice suite evaluations
        score (heldout.py); "" or a corpus without one: none.
    """

    def __init__(
        self,
        *,
        benchmarks_dir: str,
        results_db: ResultsDB,
        cache_dir: str,
        loader: Loader = checkpoints.load_checkpoint,
        code_runner: Optional[code_exec.CodeRunner] = None,
        default_judge: JudgeSpec = JudgeSpec(),
        max_loaded_models: int = 2,
        bootstrap_resamples: int = 1000,
        trainer_connect_timeout_s: float = 10.0,
        source: str = "local",
        heldout_corpus_dir: str = "",
    ):
        self.benchmarks_dir = benchmarks_dir
        self.heldout_corpus_dir = (
            heldout_corpus_dir
            if heldout_corpus_dir and heldout.has_slice(heldout_corpus_dir)
            else ""
        )
        self.db = results_db
        self.models = checkpoints.ModelCache(loader, capacity=max_loaded_models)
        self.evaluator = evaluator.Evaluator(
            benchmarks_dir=benchmarks_dir,
            cache_dir=cache_dir,
            code_runner=code_runner,
            bootstrap_resamples=bootstrap_resamples,
            source=source,
        )
        self.source = source
        self.default_judge = default_judge
        self.bootstrap_resamples = bootstrap_resamples
        self.trainer_connect_timeout_s = trainer_connect_timeout_s

    # ------------------------------------------------------------ registry

    def list_tasks(self) -> tuple[list[TaskInfo], list[tasks_lib.Suite]]:
        """Tasks with data here, and the suites restricted to those tasks."""
        available = tasks_lib.available_tasks(self.benchmarks_dir, self.source)
        infos = [
            TaskInfo(t.name, t.category, t.metric, t.num_examples, t.kind, t.description)
            for t in available
        ]
        names = {t.name for t in available}
        suites = [
            dataclasses.replace(s, tasks=tuple(n for n in s.tasks if n in names))
            for s in tasks_lib.SUITES.values()
        ]
        return infos, suites

    def resolve(self, suite: str, task_names: Sequence[str], limit: int):
        return tasks_lib.resolve(
            suite, task_names, limit, benchmarks_dir=self.benchmarks_dir, source=self.source
        )

    # ------------------------------------------------------------ evaluation

    def _settings(
        self, task: tasks_lib.Task, limit: int, num_samples: int, seed: int, generation_limit: int
    ) -> str:
        # A generation limit at or above the examples scored is no limit (same key).
        generated = generation_limit if task.kind != tasks_lib.MULTIPLE_CHOICE else 0
        extra = (
            {"generation_limit": generated} if 0 < generated and not 0 < limit <= generated else {}
        )
        return settings_key(
            limit=limit,
            num_samples=max(1, num_samples),
            seed=seed,
            scoring=evaluator.scoring_fingerprint(task),
            source=self.source,
            **extra,
        )

    def evaluate(
        self,
        checkpoint_uri: str,
        *,
        suite: str = "",
        task_names: Sequence[str] = (),
        limit: int = 0,
        num_samples: int = 1,
        seed: int = 0,
        generation_limit: int = 0,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[Scored]:
        """Each task's result as it finishes, then the aggregates (see module docstring)."""
        if num_samples < 0:
            raise errors.InvalidArgument("num_samples", f"must be >= 0, got {num_samples}")
        if generation_limit < 0:
            raise errors.InvalidArgument(
                "generation_limit", f"must be >= 0 (0: every example), got {generation_limit}"
            )
        if not checkpoint_uri:
            raise errors.InvalidArgument("checkpoint_uri", "required")
        named_heldout = heldout.TASK in task_names
        if named_heldout and not self.heldout_corpus_dir:
            raise errors.NotFound("tasks", f"{heldout.TASK!r} needs a corpus with a held-out slice")
        task_names = [t for t in task_names if t != heldout.TASK]
        if named_heldout and not task_names:
            task_list, limit = [], limit
        else:
            task_list, limit = self.resolve(suite, task_names, limit)
        return self._evaluate(
            checkpoint_uri,
            task_list,
            limit=limit,
            num_samples=max(1, num_samples),
            seed=seed,
            generation_limit=generation_limit,
            should_stop=should_stop,
            with_heldout=bool(self.heldout_corpus_dir) and (named_heldout or not task_names),
            named_heldout=named_heldout,
        )

    def _evaluate(
        self,
        uri,
        task_list,
        *,
        limit,
        num_samples,
        seed,
        should_stop,
        generation_limit: int = 0,
        loaded: Optional[checkpoints.LoadedCheckpoint] = None,
        with_heldout: bool = False,
        named_heldout: bool = False,
    ) -> Iterator[Scored]:
        # Load before the first yield so a missing checkpoint fails the call at once.
        loaded = loaded or self.models.get(uri)
        self.db.record_checkpoint(uri, loaded.step, loaded.lineage)

        def generate() -> Iterator[Scored]:
            results = []
            for task in task_list:
                if should_stop():
                    return
                settings = self._settings(task, limit, num_samples, seed, generation_limit)
                result = self.db.get_result(uri, task.name, settings)
                if result is None:
                    result = self.evaluator.evaluate_task(
                        loaded.model,
                        task,
                        limit=limit,
                        num_samples=num_samples,
                        seed=seed,
                        generation_limit=generation_limit,
                    )
                    self.db.put_result(uri, settings, result)
                results.append(result)
                yield Scored(uri, loaded.step, result)
            if with_heldout and not should_stop():
                if self._heldout_applies(loaded):
                    yield Scored(uri, loaded.step, self._heldout(uri, loaded, limit, seed))
                elif named_heldout:
                    raise errors.FailedPrecondition(
                        "tasks",
                        f"{heldout.TASK!r}: {uri} was not trained on the corpus at "
                        f"{self.heldout_corpus_dir} (its tokenizer differs)",
                    )
                else:
                    logging.info("%s: no held-out BPB (trained on another corpus)", uri)
            for agg in evaluator.aggregate(results, seed=seed, resamples=self.bootstrap_resamples):
                yield Scored(uri, loaded.step, agg)

        return generate()

    def _heldout_applies(self, loaded) -> bool:
        tokenizer = getattr(loaded.model, "tokenizer", None)
        return tokenizer is None or heldout.same_tokenizer(self.heldout_corpus_dir, tokenizer)

    def _heldout(self, uri, loaded, limit: int, seed: int) -> evaluator.TaskResult:
        settings = settings_key(
            limit=limit,
            seed=seed,
            heldout=heldout.fingerprint(self.heldout_corpus_dir),
            scoring=heldout.scoring_fingerprint(),
        )
        result = self.db.get_result(uri, heldout.TASK, settings)
        if result is None:
            result = heldout.evaluate(
                loaded.model,
                heldout.load(self.heldout_corpus_dir, limit),
                seed=seed,
                resamples=self.bootstrap_resamples,
            )
            self.db.put_result(uri, settings, result)
        return result

    # ------------------------------------------------------------ FollowRun

    def follow_run(
        self,
        trainer_address: str,
        run_id: str,
        *,
        suite: str = "",
        task_names: Sequence[str] = (),
        limit: int = 0,
        cancellation: Optional[follow.Cancellation] = None,
        channel_options=(),
    ) -> Iterator[Scored]:
        """Results of every not-yet-evaluated committed checkpoint of a run, until it ends."""
        task_list, limit = self.resolve(suite or ("" if task_names else "tiny"), task_names, limit)
        cancellation = cancellation or follow.Cancellation()
        seed, num_samples = 0, 1
        follow_settings = settings_key(
            tasks=[t.name for t in task_list],
            limit=limit,
            num_samples=num_samples,
            seed=seed,
            scoring=[evaluator.scoring_fingerprint(t) for t in task_list],
            source=self.source,
        )
        events = follow.follow_events(
            trainer_address,
            run_id,
            cancellation,
            connect_timeout_s=self.trainer_connect_timeout_s,
            channel_options=channel_options,
        )

        def generate() -> Iterator[Scored]:
            for event in events:
                if not isinstance(event, follow.CheckpointEvent):
                    continue
                if self.db.followed_status(run_id, follow_settings, event.uri):
                    continue  # done (or missing) before: never twice
                try:
                    loaded = self.models.get(event.uri)
                except (errors.NotFound, errors.FailedPrecondition) as e:
                    # Deleted by the trainer's keep policy before its turn, or unreadable:
                    # recorded, so a restart does not try again, and skipped.
                    status = "missing" if isinstance(e, errors.NotFound) else "unreadable"
                    logging.warning("FollowRun %s: %s checkpoint skipped: %s", run_id, status, e)
                else:
                    if event.lineage:
                        loaded = dataclasses.replace(
                            loaded, lineage={**loaded.lineage, **event.lineage}
                        )
                    yield from self._evaluate(
                        event.uri,
                        task_list,
                        limit=limit,
                        num_samples=num_samples,
                        seed=seed,
                        should_stop=lambda: cancellation.cancelled,
                        loaded=loaded,
                        with_heldout=bool(self.heldout_corpus_dir) and not task_names,
                    )
                    # Cancelled part-way: not followed, so a restart evaluates it again.
                    status = None if cancellation.cancelled else "done"
                if status:
                    self.db.mark_followed(
                        run_id,
                        follow_settings,
                        event.uri,
                        step=event.step,
                        sequence=event.sequence,
                        status=status,
                    )

        return generate()

    # ------------------------------------------------------------ Compare

    def _judge(self, spec: JudgeSpec) -> judge_lib.Judge:
        spec = spec if spec.is_set else self.default_judge
        if spec.checkpoint_uri:
            return judge_lib.LikelihoodJudge(
                self.models.get(spec.checkpoint_uri, field="judge.checkpoint_uri").model
            )
        if spec.openai_base_url:
            return judge_lib.OpenAIJudge.from_env(
                spec.openai_base_url, spec.openai_model, spec.openai_api_key_env
            )
        raise errors.InvalidArgument(
            "judge",
            "none given and the service has no default judge (--judge_base_url / --judge_model)",
        )

    def compare(
        self,
        checkpoint_a: str,
        checkpoint_b: str,
        *,
        prompt_set: str,
        judge: JudgeSpec = JudgeSpec(),
        limit: int = 0,
        max_new_tokens: int = 0,
        seed: int = 0,
    ) -> judge_lib.Comparison:
        if limit < 0:
            raise errors.InvalidArgument("limit", f"must be >= 0, got {limit}")
        if max_new_tokens < 0:
            raise errors.InvalidArgument("max_new_tokens", f"must be >= 0, got {max_new_tokens}")
        name = prompt_set or "mt_bench"
        if name not in tasks_lib.PROMPT_SETS:
            raise errors.InvalidArgument(
                "prompt_set",
                f"unknown prompt set {name!r}; known: {sorted(tasks_lib.PROMPT_SETS)}",
            )
        if not checkpoint_a:
            raise errors.InvalidArgument("checkpoint_a", "required")
        if not checkpoint_b:
            raise errors.InvalidArgument("checkpoint_b", "required")
        try:
            rows = tasks_lib.PROMPT_SETS[name].load(self.benchmarks_dir, limit)
        except FileNotFoundError as e:
            raise errors.NotFound("prompt_set", f"no data for {name!r}: {e}") from e
        the_judge = self._judge(judge)  # validate before generating anything
        model_a = self.models.get(checkpoint_a, field="checkpoint_a").model
        model_b = self.models.get(checkpoint_b, field="checkpoint_b").model
        return judge_lib.compare(
            model_a,
            model_b,
            [r["prompt"] for r in rows],
            the_judge,
            max_new_tokens=max_new_tokens or 128,
            seed=seed,
        )
