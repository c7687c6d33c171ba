"""The evaluate CLI on real checkpoints: a table with a relative-change column."""

import subprocess

from libs.serving import process
from services.eval import evaluate_main, tasks, testing


def test_cli_prints_the_table_with_baseline(tmp_path):
    uri = testing.write_checkpoint(str(tmp_path / "run"), step=4)
    base = testing.write_checkpoint(str(tmp_path / "base"), step=1, seed=1)
    out = subprocess.run(
        process.module_command("services.eval.evaluate_main")
        + [
            f"--checkpoint={uri}",
            f"--baseline={base}",
            "--tasks=copa,cb",
            "--limit=3",
            f"--results_db={tmp_path / 'r.sqlite'}",
            f"--cache_dir={tmp_path / 'cache'}",
            f"--benchmarks_dir={tasks.default_benchmarks_dir()}",
        ],
        env=process.child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("task"))
    assert "vs baseline" in lines[header] and "bpb" in lines[header]
    copa = lines[header + 1].split()
    assert float(copa[copa.index("3") + 1]) > 0  # the gold choices' bits per byte
    rows = [line.split()[0] for line in lines[header + 1 :]]
    assert rows == [
        "copa",
        "cb",
        "aggregate/nl_reasoning",
        "aggregate/nl_average",
        "aggregate/total",
    ]
    assert f"{uri} (step 4)" in out.stdout


def test_cli_reports_a_missing_checkpoint(tmp_path):
    out = subprocess.run(
        process.module_command("services.eval.evaluate_main")
        + [
            f"--checkpoint={tmp_path / 'nothing'}",
            "--suite=smoke",
            f"--results_db={tmp_path / 'r.sqlite'}",
        ],
        env=process.child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    assert "error: checkpoint_uri:" in out.stderr


def test_table_lists_heldout_bpb_per_source():
    from services.eval.evaluator import TaskResult

    r = TaskResult(
        "heldout_bpb",
        "heldout",
        "bpb",
        1.5,
        1.4,
        1.6,
        5,
        extra={"code": 1.25, "code/documents": 2.0, "text": 1.75, "text/documents": 3.0},
        intervals={"code": (1.0, 1.5), "text": (1.5, 2.0)},
    )
    lines = evaluate_main.format_table([r], {}).splitlines()
    assert lines[1].split()[:4] == ["heldout_bpb", "heldout", "bpb", "1.5000"]
    assert lines[2].split() == ["code", "heldout", "bpb", "1.2500", "[1.000,", "1.500]", "2"]
    assert lines[3].split()[0] == "text" and lines[3].split()[-1] == "3"
