"""`python -m tests.fuzz --cases 5000`: run a seeded case list, print the counts per family
and every crash, hang and integrity failure. Exit status 1 when there is any."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tests.fuzz.cases import case_list
from tests.fuzz.runner import TIME_LIMIT_S, run_cases
from tests.fuzz.summary import Tally


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz")
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--family", help="only this family")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S)
    parser.add_argument("--json", type=Path, help="also write the counts and failures here")
    args = parser.parse_args()
    cases = case_list(args.cases, args.seed, args.family)
    tally = Tally()
    started = time.monotonic()
    for done, outcome in enumerate(run_cases(cases, args.workers, args.time_limit), 1):
        tally.add(outcome)
        if not tally.passed(outcome):
            print(outcome.line(), flush=True)
        if done % 250 == 0:
            print(f"... {done}/{len(cases)} in {time.monotonic() - started:.0f} s", flush=True)
    print(tally.table())
    print(f"{len(cases)} cases in {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(tally.describe(), indent=2) + "\n")
    return 0 if tally.clean() else 1


if __name__ == "__main__":
    sys.exit(main())
