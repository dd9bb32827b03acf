"""``python -m tests.slowest N REPORT.xml...``: the N slowest tests of JUnit XML reports (setup,
call and teardown together), for ``scripts/test``, whose phases each write one report."""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET


def slowest(paths: list[str], count: int) -> list[tuple[float, str]]:
    times = []
    for path in paths:
        if not os.path.exists(path):  # a phase that stopped before writing its report
            continue
        for case in ET.parse(path).getroot().iter("testcase"):
            name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            times.append((float(case.get("time") or 0), name))
    return sorted(times, reverse=True)[:count]


def main(argv: list[str]) -> None:
    count, paths = int(argv[0]), argv[1:]
    print(f"== the {count} slowest tests (setup + call + teardown)")
    for seconds, name in slowest(paths, count):
        print(f"{seconds:8.2f}s  {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
