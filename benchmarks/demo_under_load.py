#!/usr/bin/env python
"""The demo on an idle machine and with one CPU-heavy competitor.

Runs ``make demo``'s driftscope command (read from the Makefile) from a checkout twice, once
alone and once while a Python busy loop runs beside it, as the command is written (no
``OMP_NUM_THREADS``: driftscope's thread policy decides), prints both wall times and their ratio
(target <= 2x), and checks that the tables it prints match the tables in docs/results.md's "What the
default shows" section, cell by cell. Run files go to a temporary directory.

    python benchmarks/demo_under_load.py [--checkout .] [--only idle|busy] [--json out.json]

Exit status 1 if a printed table differs from docs/results.md's. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUSY_LOOP = "while True: pass"
START, END = "<!-- observation:start -->", "<!-- observation:end -->"


def demo_command(checkout: Path) -> list[str]:
    """``make demo``'s driftscope command, as argv after ``driftscope``."""
    for line in (checkout / "Makefile").read_text().splitlines():
        if "driftscope reproduce" in line:
            words = shlex.split(line.strip())
            return words[words.index(next(w for w in words if w.endswith("driftscope"))) + 1 :]
    raise SystemExit("no 'driftscope reproduce' line in the Makefile")


def tables(text: str) -> list[list[list[str]]]:
    """The markdown tables in ``text``: each a list of rows of stripped cells (bold removed,
    the rule row dropped)."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        line = line.strip()
        if line.startswith("|") and line.endswith("|"):
            cells = [c.strip().replace("**", "") for c in line[1:-1].split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def readme_tables(checkout: Path) -> list[list[list[str]]]:
    text = (checkout / "docs" / "results.md").read_text()
    return tables(text[text.index(START) : text.index(END)])


def run_demo(checkout: Path, out: Path, busy: bool) -> tuple[float, str, int]:
    argv = demo_command(checkout)
    if "--out" in argv:
        argv[argv.index("--out") + 1] = str(out)
    else:
        argv += ["--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(checkout), "MPLBACKEND": "Agg"}
    env.pop("OMP_NUM_THREADS", None)  # as a user types it: the thread policy decides
    competitor = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if busy else None
    try:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "driftscope", *argv],
            cwd=checkout,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )  # stderr (the progress lines) passes through
        seconds = time.perf_counter() - t0
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return seconds, proc.stdout, proc.returncode


def compare_tables(printed: str, expected: list[list[list[str]]]) -> list[str]:
    got = tables(printed)
    problems = []
    if len(got) != len(expected):
        problems.append(f"{len(got)} tables printed, docs/results.md has {len(expected)}")
    for i, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            diff = [f"{a} != {b}" for ra, rb in zip(g, e) for a, b in zip(ra, rb) if a != b]
            problems.append(f"table {i + 1}: " + ("; ".join(diff[:8]) or "different rows"))
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkout", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--only", choices=("idle", "busy"), action="append")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    checkout = args.checkout.resolve()
    expected = readme_tables(checkout)
    result: dict = {
        "command": "driftscope " + " ".join(demo_command(checkout)),
        "checkout": str(checkout),
        "cpu_count": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    ok = True
    with tempfile.TemporaryDirectory(prefix="demo-") as tmp:
        for mode in args.only or ["idle", "busy"]:
            print(f"[{time.strftime('%H:%M:%S')}] demo, {mode} ...", flush=True)
            seconds, out, rc = run_demo(checkout, Path(tmp) / mode, busy=mode == "busy")
            problems = compare_tables(out, expected) if rc == 0 else [f"exit status {rc}"]
            ok &= not problems
            result[mode] = {"seconds": round(seconds, 1), "rc": rc, "table_problems": problems}
            print(out, flush=True)
            print(
                f"[{time.strftime('%H:%M:%S')}] demo, {mode}: {seconds:.0f} s; tables "
                + ("match docs/results.md" if not problems else "DIFFER: " + " | ".join(problems)),
                flush=True,
            )
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    if "idle" in result and "busy" in result:
        ratio = result["busy"]["seconds"] / result["idle"]["seconds"]
        result["ratio_busy_idle"] = round(ratio, 2)
        print(f"busy / idle: {ratio:.2f}x (target <= 2)")
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
