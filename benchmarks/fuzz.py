"""Fuzz the data layer: the properties of `tests/test_fuzz_data.py`, with thousands of generated cases per target.

    python benchmarks/fuzz.py [--per-target 1500]

Prints, per target, how many cases ran, how they ended (records, `DataError`, skipped image, ...) and any property
failure (an exception other than `DataError`, or a wrong output), with the smallest failing input Hypothesis found.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import time
import traceback
import warnings
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_fuzz_data import PROPERTIES  # noqa: E402


def fuzz(name: str, examples: int) -> tuple[collections.Counter, str | None, float]:
    """Run one property for `examples` cases; the outcome counts, the failure (if any) and the seconds taken."""
    check, strategies = PROPERTIES[name]
    outcomes: collections.Counter = collections.Counter()

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.tuples(*strategies))
    def run(args: tuple) -> None:
        try:
            outcomes[check(*args)] += 1
        except BaseException:
            outcomes["FAILED"] += 1
            raise

    start = time.perf_counter()
    failure = None
    try:
        run()
    except Exception:
        failure = traceback.format_exc(limit=-3)
    return outcomes, failure, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-target", type=int, default=1500, help="generated cases per target (7 targets)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the loaders' skip warnings would flood the output
    warnings.simplefilter("ignore")  # Pillow's truncated-file warnings, likewise
    total, failures = 0, 0
    print(f"{'target':<22} {'cases':>6} {'seconds':>8}  outcomes")
    for name in PROPERTIES:
        outcomes, failure, seconds = fuzz(name, args.per_target)
        cases = sum(outcomes.values())
        total += cases
        summary = ", ".join(f"{outcome}: {count}" for outcome, count in outcomes.most_common())
        print(f"{name:<22} {cases:>6} {seconds:>8.1f}  {summary}")
        if failure:
            failures += 1
            print(f"  FOUND in {name}:\n" + "\n".join("    " + line for line in failure.splitlines()))
    print(f"total: {total} cases, {failures} targets with failures" + ("" if failures else " (no unhandled exception)"))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
