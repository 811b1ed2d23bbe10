"""A Flower deployment on this machine (loopback): one SuperLink, N SuperNodes, ``flwr run`` of an
app, then every daemon stopped by its PID.

::

    python scripts/flower_loopback.py --nodes 2 --out runs/dep.h5 \\
        --run-config "train.algorithm='fedpvr' train.clients=2 train.rounds=2"

It picks free 127.0.0.1 ports, writes a Flower home (``--workdir``, default a temporary folder)
whose ``config.toml`` names the SuperLink connection ``loop``, starts the SuperLink and waits
until its port accepts connections, starts SuperNode ``i`` with ``partition-id=i
num-partitions=N`` (``--isolation process``; through ``python -m driftscope.flower.supernode``,
Flower's SuperNode with its polls shortened, unless ``--idle-poll 0``) with its long-lived
ClientApp executor
(``python -m driftscope.flower.executor``: one process serves all of the node's messages) and
waits until the SuperLink has activated all of them, submits the run
(``--app``, default driftscope's own app; ``out`` is passed in its run config), waits until the
run file's status is no longer ``running`` and stops the daemons (their process groups: SIGTERM,
then SIGKILL). Every process gets one torch/OpenMP thread (``OMP_NUM_THREADS=1``), so the run is
the one ``driftscope run`` gives with the same config (its default thread policy uses one thread
for small models), and Flower's runtime dependency installation is off. Daemon logs are in
the work folder. Exit status 0 when the run completed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free on 127.0.0.1, below the ephemeral range.

    A port the system hands out (``bind(0)``) comes from the ephemeral range, where every
    outgoing connection also takes its port: with a dozen daemons connecting to each other, one
    of them may take a picked port before the daemon meant to listen there binds it ("address
    already in use"). Ports are tried in random order from 20000 up to the range's start, each
    held until all are found, so no two are the same.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = list(range(20000, low)) if low > 20000 + 10 * n else []
    random.shuffle(candidates)
    held: list[socket.socket] = []
    try:
        for port in candidates:
            if len(held) == n:
                break
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            held.append(s)
        while len(held) < n:  # no room below the ephemeral range: the system's choice
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def stop(proc: subprocess.Popen) -> None:
    """End a daemon and what it spawned (its process group, by PID), politely then firmly."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
    with contextlib.suppress(ProcessLookupError):  # children left in the group
        os.killpg(proc.pid, signal.SIGKILL)


def wait_for(predicate, seconds: float, what: str, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(
                    f"flower_loopback: {p.args[0]} exited ({p.returncode}) while waiting for {what}"
                )
        if time.monotonic() > deadline:
            raise SystemExit(f"flower_loopback: timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(0.5)


def run_status(path: Path) -> str | None:
    if not path.exists():
        return None
    from driftscope import open_run

    try:
        with open_run(path) as run:
            return run.status
    except Exception:  # being created
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=2, help="SuperNodes (partition-id 0..N-1)")
    p.add_argument("--out", required=True, help="the run file (made absolute)")
    p.add_argument("--run-config", default="", help="flwr run --run-config overrides")
    p.add_argument("--app", default=str(ROOT / "driftscope" / "flower" / "app"))
    p.add_argument("--workdir", help="Flower home and daemon logs [a temporary folder]")
    p.add_argument(
        "--isolation",
        choices=("executor", "subprocess"),
        default="executor",
        help="executor: one long-lived ClientApp process per SuperNode "
        "(driftscope.flower.executor); subprocess: Flower's default, a fresh process per message",
    )
    p.add_argument(
        "--idle-poll",
        type=float,
        default=0.25,
        help="seconds an idle SuperNode waits before asking the SuperLink again, capped by "
        "driftscope.flower.supernode (its waits for the ClientApp's reply at 0.02 s) "
        "[0.25]; 0: Flower's own flower-supernode (3 s, and 0.5 s steps)",
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds for the whole run")
    args = p.parse_args(argv)
    if not 0 <= args.idle_poll < float("inf"):
        p.error(f"--idle-poll must be >= 0 seconds (got {args.idle_poll}); 0: Flower's own polls")
    out = Path(args.out).resolve()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="flower-loopback-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    link, *runtimes = free_ports(1 + args.nodes)
    (work / "config.toml").write_text(
        f'[superlink]\ndefault = "loop"\n\n[superlink.loop]\n'
        f'address = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
        FLWR_HOME=str(work),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )

    def start(cmd: list[str], log: str) -> subprocess.Popen:
        with (work / log).open("w") as f:
            proc = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        daemons.append(proc)
        return proc

    daemons: list[subprocess.Popen] = []
    started = time.monotonic()
    try:
        start([str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(link),
               "--database", ":flwr-in-memory:"], "superlink.log")  # fmt: skip
        wait_for(lambda: listening(link), 120, "the SuperLink's port", daemons)
        for i in range(args.nodes):
            runtime = runtimes[i]  # the SuperNode's Runtime API, where ClientApps get tasks
            supernode = (
                [sys.executable, "-m", "driftscope.flower.supernode", "--idle-poll",
                 str(args.idle_poll), "--"] if args.idle_poll > 0 else [str(BIN / "flower-supernode")]
            )  # fmt: skip
            node = start([*supernode, "--insecure", "--superlink",
                          f"127.0.0.1:{link}", "--host", "127.0.0.1", "--port", str(runtime),
                          "--node-config", f"partition-id={i} num-partitions={args.nodes}",
                          "--isolation", "process" if args.isolation == "executor" else "subprocess"],
                         f"supernode{i}.log")  # fmt: skip
            if args.isolation == "executor":
                start([sys.executable, "-m", "driftscope.flower.executor", "--runtime-api-address",
                       f"127.0.0.1:{runtime}", "--parent-pid", str(node.pid)],
                      f"executor{i}.log")  # fmt: skip
        log = work / "superlink.log"
        wait_for(
            lambda: log.read_text(errors="replace").count("Activated node_id") >= args.nodes,
            120,
            f"{args.nodes} SuperNodes to connect",
            daemons,
        )
        up = time.monotonic() - started
        run_config = " ".join(x for x in (f"out='{out}'", args.run_config) if x)
        submit = subprocess.run(
            [str(BIN / "flwr"), "run", args.app, "loop", "--run-config", run_config],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if submit.returncode != 0:
            print(submit.stdout + submit.stderr, file=sys.stderr)
            return 2
        remaining = args.timeout - (time.monotonic() - started)
        wait_for(lambda: run_status(out) not in (None, "running"), remaining, "the run", daemons)
    finally:
        for proc in reversed(daemons):
            stop(proc)
    status = run_status(out)
    print(f"flower_loopback: daemons up in {up:.1f} s; run {status}: {out} (logs in {work})")
    return 0 if status == "complete" else 1


if __name__ == "__main__":
    sys.exit(main())
