"""Run the fault tests many times and count each test's failures: ``make soak [N=10]``.

    python -m tests.soak [--count N] [--procs P] [TEST ...] [-- PYTEST_ARGS ...]

TEST is a file or a node id; without any, ``SOAK_TESTS`` (space-separated) or the default
set below: the worker crash, outage, two-worker and live-alert tests. One pytest session
repeats each test N times (pytest-repeat, rounds interleaved: every test once, then again)
in P processes (pytest-xdist ``--dist loadfile``: each process starts its own broker and
ClickHouse once, and keeps all the repetitions of a file). The outcome of every run is read
from pytest's JUnit XML and printed as one table row per test: node id, runs, failures.
Exit status 0 when nothing failed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

DEFAULT_TESTS = (
    "tests/reliability/test_worker_crashes.py",  # SIGKILLs; two workers, one killed
    "tests/reliability/test_outages.py",
    "tests/reliability/test_two_publishers.py",  # two workers, one killed again and again
    "tests/integration/test_processor_crash.py",
    "tests/integration/test_processor_outage.py",  # two workers
    "tests/integration/test_alerts_live.py",
)


def node_id(case: ET.Element, modules: dict[str, str], count: int) -> str:
    """``path::[Class::]name`` of a JUnit test case, without pytest-repeat's ``i-N`` id."""
    parts, name = case.get("classname", "").split("."), case.get("name", "")
    path = ".".join(parts)
    for i in range(len(parts), 0, -1):  # the longest prefix that names a module
        if (module := ".".join(parts[:i])) in modules:
            path = "::".join([modules[module], *parts[i:]])
            break
    if count > 1:  # "test[2-10]" -> "test", "test[hung-2-10]" -> "test[hung]"
        name = re.sub(rf"(\[|-)\d+-{count}\]$", lambda m: "]" if m[1] == "-" else "", name)
    return f"{path}::{name}"


def main(argv: list[str]) -> int:
    cut = argv.index("--") if "--" in argv else len(argv)  # after "--": pytest's own options
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10, help="runs of each test")
    parser.add_argument("--procs", type=int, default=2, help="pytest processes (xdist)")
    parser.add_argument("tests", nargs="*", help="files or node ids (default: SOAK_TESTS)")
    args = parser.parse_args(argv[:cut])
    tests = args.tests or os.environ.get("SOAK_TESTS", "").split() or list(DEFAULT_TESTS)
    files = {Path(os.path.relpath(test.split("::")[0])) for test in tests}  # as JUnit names them
    modules = {".".join(f.with_suffix("").parts): f.as_posix() for f in files}
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "soak.xml"
        command = [
            sys.executable,
            "-m",
            "pytest",
            *tests,
            f"--junitxml={report}",
            f"--count={args.count}",
            "--repeat-scope=session",
            *argv[cut + 1 :],
        ]
        if args.procs > 1:
            command += ["-n", str(args.procs), "--dist", "loadfile"]
        print(" ".join(command), flush=True)
        code = subprocess.call(command)
        if not report.exists():
            return code or 1
        cases = list(ET.parse(report).getroot().iter("testcase"))
    runs: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    for case in cases:
        if case.find("skipped") is not None:
            continue
        test = node_id(case, modules, args.count)
        runs[test] += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failures[test] += 1
    width = max([len("test node id"), *map(len, runs)])
    print(f"\n{'test node id':<{width}} | runs | failures")
    print(f"{'-' * width}-|------|---------")
    for test in sorted(runs):
        print(f"{test:<{width}} | {runs[test]:>4} | {failures[test]:>8}")
    print(f"{len(runs)} tests, {sum(runs.values())} runs, {sum(failures.values())} failures")
    return 1 if failures else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
