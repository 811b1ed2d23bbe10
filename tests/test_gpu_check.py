"""The GPU check's tiny CPU version: every section runs and lands in the JSON, so the prepared
GPU script cannot rot while no GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_check(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_tiny_cpu_check_writes_every_section(tmp_path: Path) -> None:
    res = run_check(tmp_path, "--device", "cpu", "--tiny", "--threads", "1")
    assert res["could_not"] == []
    s = res["sections"]
    assert set(s) == {"vgg_round", "recording", "batched", "agreement", "memory"}
    v = s["vgg_round"]
    assert v["driftscope_round_s"]["median"] > 0 and v["plain_round_s"]["median"] > 0
    assert v["driftscope_images_per_s"] > 0 and v["plain_images_per_s"] > 0
    # the plain loop does the same SGD steps (same batches, same augmentation draws): float32
    # summation order differs between the flat update and torch.optim.SGD, so a few ulps of the
    # parameters' scale (max abs param ~0.1-1), far below any wrong batch or augmentation (~1e-3)
    assert v["max_abs_diff_vs_plain"] <= 1e-5 * max(v["max_abs_param"], 1.0)
    assert {"off", "default", "paper"} <= set(s["recording"]["seconds"])
    assert s["recording"]["default_vs_off"]["median"] > 0
    assert [c["clients"] for c in s["batched"]["cases"]] == [4, 8]
    for c in s["batched"]["cases"]:
        # sequential and batched clients: same batches, float32 tolerance (batched.py's contract)
        assert c["max_abs_diff_seq_vs_batched"] <= 1e-5
    a = s["agreement"]
    # the same device twice: no difference at all
    assert a["max_rel_diff_params"] == 0 and a["max_rel_diff_grams"] == 0
    assert a["deterministic_bit_identical"] is True
    assert set(s["memory"]["peak_mib"]) == {"vgg_round", "recording", "batched", "agreement"}
    md = (tmp_path / "check.md").read_text()
    assert "VGG-11 round" in md and "deterministic" in md


def test_asked_for_cuda_without_one_runs_tiny_cpu_and_says_so(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import gpu_check
    finally:
        sys.path.remove(str(ROOT))
    seen = []
    for name in ("vgg_round", "recording", "batched", "agreement"):
        monkeypatch.setattr(gpu_check, name, lambda *a, name=name: seen.append((name, a)) or {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "c.json")]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "no GPU" in ln]
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no GPU")
    res = json.loads((tmp_path / "c.json").read_text())
    assert res["environment"]["tiny"] is True and res["environment"]["device"] == "cpu"
    # every step ran, on the CPU, at the tiny sizes
    assert [n for n, _ in seen] == ["vgg_round", "recording", "batched", "agreement"]
    assert all("cpu" in a for _, a in seen)
    assert seen[0][1][0] is gpu_check.TINY
