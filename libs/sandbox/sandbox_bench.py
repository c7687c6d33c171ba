"""Throughput of the sandbox: trivial programs (and trivial tests) per second
through run_many, on this machine's cores. Prints figures; not a test."""

import argparse
import os
import time

from libs.sandbox import sandbox as sb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--parallelism", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    sb.check_available()
    kinds = {
        "run_program": sb.Job(program="print(1 + 1)"),
        "run_tests": sb.Job(program="def f(x):\n    return x + 1\n", tests="assert f(1) == 2\n"),
    }
    for name, job in kinds.items():
        sb.run_many([job] * args.parallelism, parallelism=args.parallelism)  # warm up
        t0 = time.perf_counter()
        results = sb.run_many([job] * args.jobs, parallelism=args.parallelism)
        elapsed = time.perf_counter() - t0
        assert all(r.passed for r in results), [r for r in results if not r.passed][:1]
        mean = sum(r.duration_s for r in results) / len(results)
        print(
            f"{name}: {args.jobs / elapsed:.1f} programs/s "
            f"({args.jobs} jobs, parallelism {args.parallelism}, "
            f"{os.cpu_count()} CPUs, mean latency {mean * 1e3:.0f} ms)"
        )


if __name__ == "__main__":
    main()
