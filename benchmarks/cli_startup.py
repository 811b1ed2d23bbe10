"""7. CLI start-up: ``driftscope --help`` and a usage error, as a user's shell runs them.

Each call is a fresh ``python -m driftscope`` process (what the ``driftscope`` script runs),
interleaved with a bare ``python -c pass`` so that the interpreter's own start-up is visible.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, interleaved, log, row, summarise

COMMANDS = {
    "help": ["--help"],
    "usage_error": ["run", "--rounds", "x"],
}
EXPECTED_RC = {"help": 0, "usage_error": 2, "python": 0}


def bench(quick: bool, tmp: Path, threads: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rcs: dict[str, set[int]] = {}
    outputs: dict[str, str] = {}

    def call(name: str, argv: list[str]) -> Any:
        def go() -> None:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
            rcs.setdefault(name, set()).add(proc.returncode)
            outputs[name] = (proc.stdout + proc.stderr)[-300:]

        return go

    arms = {
        name: call(name, [sys.executable, "-m", "driftscope", *args])
        for name, args in COMMANDS.items()
    }
    arms["python"] = call("python", [sys.executable, "-c", "pass"])
    reps = 3 if quick else 9
    log(f"cli: driftscope --help and a usage error, {reps} repeats each (fresh processes)")
    for go in arms.values():  # warm the page cache
        go()
    t = interleaved(arms, reps)
    for name, want in EXPECTED_RC.items():
        if rcs[name] != {want}:
            raise RuntimeError(f"cli: {name} exited {rcs[name]}, expected {want}: {outputs[name]}")
    bare = summarise(t["python"])["median"]
    rows = [
        row(
            "CLI: `driftscope --help` wall time",
            t["help"],
            ("<=", 0.5),
            unit=" s",
            note=f"fresh process; a bare `python -c pass` takes {bare:.3f} s",
        ),
        row(
            "CLI: usage error (`driftscope run --rounds x`, exit 2) wall time",
            t["usage_error"],
            ("<=", 0.5),
            unit=" s",
        ),
    ]
    return {
        "rows": rows,
        "config": {"commands": COMMANDS, "python": sys.executable},
        "extra": {"seconds": {k: summarise(v) for k, v in t.items()}},
    }
