"""Peak anonymous and file-backed RSS of one ``driftscope`` command (``/proc/self/status``,
polled every 5 ms): what ``fedpvr_auto``'s client state costs within ``--state-budget-mb``.

    OMP_NUM_THREADS=1 python benchmarks/auto_head_state.py run --algorithm fedpvr_auto \\
        --clients 1000 --client-fraction 0.01 --partition iid --rounds 6 --local-epochs 1 \\
        --warmup-rounds 2 --variance-share 1 --state-budget-mb 64 --no-record --quiet --out x.h5

Linux only. File-backed pages (the scratch memmap's) are the kernel's page cache, reclaimable.
"""

from __future__ import annotations

import sys
import threading
import time

from driftscope.cli import main


def peak_rss(argv: list[str]) -> tuple[int, float, float]:
    """(exit code, peak RssAnon MiB, peak RssFile MiB) of ``driftscope argv`` in this process."""
    peak = {"RssAnon:": 0, "RssFile:": 0}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            with open("/proc/self/status") as f:
                for line in f:
                    key = line.split(maxsplit=1)[0]
                    if key in peak:
                        peak[key] = max(peak[key], int(line.split()[1]))
            time.sleep(0.005)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        rc = main(argv)
    finally:
        done.set()
        thread.join()
    return rc, peak["RssAnon:"] / 1024, peak["RssFile:"] / 1024


if __name__ == "__main__":
    rc, anon, file = peak_rss(sys.argv[1:])
    print(f"peak RssAnon {anon:.0f} MiB, peak RssFile {file:.0f} MiB")
    sys.exit(rc)
