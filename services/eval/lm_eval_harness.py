"""lm-evaluation-harness as the reference: our models behind its `LM` interface, and its
own task configs pointed at the local benchmark files.

- `HarnessLM(model)`: an `lm_eval.api.model.LM` over any TextModel (a LanguageModel
  from a checkpoint: `HarnessLM.from_checkpoint(uri)`), so every lm-eval task runs on
  our models: `loglikelihood` and `loglikelihood_rolling` are the model's own;
  `generate_until` groups requests by their generation settings and generates with
  the request's `until` strings, stopping at the end-of-document token as well
  (lm.py); `max_gen_toks` defaults to 256 as lm-eval's.
- `write_local_tasks(out_dir, ...)`: for each registry task that lm-eval also
  implements (`LM_EVAL_TASKS`), the task's rows as our reader yields them (the
  schema of the Hugging Face dataset lm-eval's config names) in out_dir/<task>.jsonl,
  and a task config `code_lab_<task>.yaml` that includes lm-eval's own config for the
  task and replaces only where its data comes from (`dataset_path: json`, the local
  file, the split; the datasets cache under out_dir/hf). lm-eval then runs offline with `include_path=out_dir`, its prompts,
  choices, targets and metrics applied to the same raw rows our converters read.

Where our registry differs from lm-eval on purpose, tasks.py says why; for the tasks
here it does not: agreement.py checks that both give the same log-likelihoods and the
same accuracy.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from lm_eval.api.model import LM

from services.eval import tasks as tasks_lib

# Our task -> (lm-eval's config under lm_eval/tasks, the split its local file is).
LM_EVAL_TASKS = {
    "arc_easy": ("arc/arc_easy.yaml", "test"),
    "boolq": ("super_glue/boolq/default.yaml", "validation"),
    "piqa": ("piqa/piqa.yaml", "validation"),
    "social_iqa": ("siqa/siqa.yaml", "validation"),
    "copa": ("super_glue/copa/default.yaml", "validation"),
    "cb": ("super_glue/cb/default.yaml", "validation"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation"),
    "winogrande": ("winogrande/default.yaml", "validation"),
}
TASK_PREFIX = "code_lab_"
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for generate_until


def lm_eval_task_name(task: str) -> str:
    return TASK_PREFIX + task


class HarnessLM(LM):
    """lm-eval's LM interface over a TextModel."""

    def __init__(self, model, *, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS):
        super().__init__()
        if max_gen_toks <= 0:
            raise ValueError(f"max_gen_toks: must be positive, got {max_gen_toks}")
        self.model = model
        self.max_gen_toks = max_gen_toks

    @classmethod
    def from_checkpoint(cls, uri: str, **kwargs) -> "HarnessLM":
        from services.eval import checkpoints

        return cls(checkpoints.load_checkpoint(uri).model, **kwargs)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [(str(r.args[0]), str(r.args[1])) for r in requests]
        return [(float(lp), bool(greedy)) for lp, greedy in self.model.loglikelihood(pairs)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return [float(x) for x in self.model.loglikelihood_rolling([r.args[0] for r in requests])]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            kwargs = dict(r.args[1] or {})
            until = kwargs.pop("until", None) or []
            if isinstance(until, str):
                until = [until]
            max_gen = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            sample = bool(kwargs.pop("do_sample", False))
            temperature = float(kwargs.pop("temperature", 0.0)) if sample else 0.0
            top_p = float(kwargs.pop("top_p", 1.0)) if sample else 1.0
            groups.setdefault((tuple(until), max_gen, temperature, top_p), []).append(i)
        out: list[str] = [""] * len(requests)
        for (until, max_gen, temperature, top_p), idx in groups.items():
            texts = self.model.generate(
                [requests[i].args[0] for i in idx],
                max_new_tokens=max_gen,
                stop=until,
                temperature=temperature,
                top_p=top_p,
            )
            for i, text in zip(idx, texts):
                out[i] = text
        return out


def lm_eval_tasks_dir() -> str:
    import lm_eval.tasks

    return os.path.dirname(lm_eval.tasks.__file__)


def write_local_tasks(
    out_dir: str,
    *,
    benchmarks_dir: str,
    task_names: Sequence[str] = tuple(LM_EVAL_TASKS),
) -> list[str]:
    """Writes each task's raw rows and lm-eval config under out_dir (the include_path);
    returns the lm-eval task names."""
    os.makedirs(out_dir, exist_ok=True)
    names = []
    for name in task_names:
        if name not in LM_EVAL_TASKS:
            raise ValueError(
                f"tasks: {name!r} has no lm-eval counterpart here; known: {sorted(LM_EVAL_TASKS)}"
            )
        config, split = LM_EVAL_TASKS[name]
        data = os.path.join(os.path.abspath(out_dir), f"{name}.jsonl")
        with open(data, "w", encoding="utf-8") as f:
            for row in tasks_lib.TASKS[name].read_local(benchmarks_dir):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        other = {"validation": "test", "test": "validation"}[split]
        yaml = "\n".join(
            [
                f"# lm-eval's own {name} config on the local file {data} (generated).",
                f"include: {os.path.join(lm_eval_tasks_dir(), config)}",
                f"task: {lm_eval_task_name(name)}",
                "tag: []",
                "dataset_path: json",
                "dataset_name: null",
                "dataset_kwargs:",
                f"  cache_dir: {json.dumps(os.path.join(os.path.abspath(out_dir), 'hf'))}",
                "  data_files:",
                f"    {split}: {json.dumps(data)}",
                "training_split: null",
                f"{split}_split: {split}",
                f"{other}_split: null",
                "fewshot_split: null",
                "",
            ]
        )
        with open(os.path.join(out_dir, f"{lm_eval_task_name(name)}.yaml"), "w") as f:
            f.write(yaml)
        names.append(lm_eval_task_name(name))
    return names
