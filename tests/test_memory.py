"""What a run holds between rounds: nothing that grows with the round number.

Memory itself is measured by benchmarks/many_clients.py; these tests hold the deterministic
properties behind its flat curves: the writer's chunk cache holds the chunk a dataset appends to
and no more, the number of open HDF5 objects does not grow with rounds, ``train`` keeps no
per-round summaries, and the control-variate scratch file is unmapped after every round.
"""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import small_config

from driftscope import train
from driftscope.engine.events import Hook
from driftscope.engine.inprocess import Simulator
from driftscope.engine.lifecycle import Lifecycle, recorder_for
from driftscope.runfile.h5write import CHUNK_CACHE
from driftscope.runfile.resume import reopen_for_resume
from driftscope.runfile.writer import RunWriter

MANY = dict(train__rounds=3, train__clients=40, train__client_fraction=0.5, data__partition="iid")


def _datasets(f: h5py.File) -> list[h5py.Dataset]:
    out: list[h5py.Dataset] = []
    f.visititems(lambda name, obj: out.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return out


def _check_chunk_cache(f: h5py.File) -> int:
    """Every dataset of the writer's file has the writer's chunk cache, and every chunk that
    takes several appended rows fits in it (else each append would read the chunk back)."""
    nbytes = CHUNK_CACHE["rdcc_nbytes"]
    multi_row = 0
    for ds in _datasets(f):
        if ds.chunks is None:  # contiguous: no chunk cache
            continue
        slots, cache_bytes, _ = ds.id.get_access_plist().get_chunk_cache()
        assert (slots, cache_bytes) == (CHUNK_CACHE["rdcc_nslots"], nbytes), ds.name
        if ds.maxshape[0] is None and ds.chunks[0] > 1:
            multi_row += 1
            assert int(np.prod(ds.chunks)) * ds.dtype.itemsize <= nbytes, ds.name
    return multi_row


def test_the_writer_caches_one_appended_chunk_per_dataset(tmp_path, digits):
    """HDF5 2.0's default chunk cache is 8 MiB per open dataset, and the writer keeps every
    dataset open for the whole run: the file is opened with a 1 MiB cache instead."""
    cfg = small_config(**MANY)
    sim = Simulator(cfg, digits)
    writer = RunWriter.create(
        tmp_path / "r.h5", config=sim.cfg, layout=sim.layout, label_histogram=sim.label_histogram
    )
    recorder = recorder_for(
        writer, cfg, sim.layout, model_factory=sim.build_model, test_x=sim.test_x
    )
    writer.declare_state({k: tuple(v.shape) for k, v in sim.state().items()})
    writer.start_swmr()

    class Cache(Hook):  # before the lifecycle closes the file
        def on_run_end(self, event):
            self.checked = _check_chunk_cache(writer.file)

    cache = Cache()
    sim.run(
        lifecycle=Lifecycle([recorder, cache], writer=writer, state=lambda: (sim.state(), None))
    )
    assert cache.checked > 10  # gram/*, cka/*, metrics, clients


def test_a_resumed_writer_has_the_same_chunk_cache(tmp_path, digits):
    class Stop(Hook):
        def on_round_start(self, event):
            if event.round == 2:
                raise KeyboardInterrupt

    path = tmp_path / "r.h5"
    with pytest.raises(KeyboardInterrupt):
        train(small_config(**MANY), path, dataset=digits, hooks=[Stop()])
    writer, _, start = reopen_for_resume(path, 40)
    assert start == 2
    assert _check_chunk_cache(writer.file) > 10
    writer.close("interrupted")


def test_open_hdf5_objects_do_not_grow_with_rounds(tmp_path, digits):
    """Round 0 records everything (Grams, updates, CKA) and opens every dataset it writes; later
    rounds reuse the handles."""
    counts = []

    class Count(Hook):
        def on_round_start(self, event):
            counts.append(h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_ALL))

        def on_run_end(self, event):  # before the writer closes
            self.on_round_start(event)

    train(small_config(**{**MANY, "train__rounds": 5}), tmp_path / "r.h5", dataset=digits,
          hooks=[Count()])  # fmt: skip
    assert len(counts) == 6 and counts[0] < counts[1]
    assert counts[1:] == [counts[1]] * 5


def test_train_keeps_no_round_summaries(digits):
    """Simulator.run keeps one summary per round (each sampled client's loss and accuracy) only
    when asked; without them the run is the same."""
    cfg = small_config(**MANY, record__enabled=False)
    a, b = Simulator(cfg, digits), Simulator(cfg, digits)
    kept = a.run()
    assert [s.round for s in kept] == [0, 1, 2] and len(kept[0].client_train_loss) == 20
    assert b.run(summaries=False) == []
    assert torch.equal(a.global_params, b.global_params)


def _mapped_kib(path: str) -> int:
    """Resident KiB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0]:  # a mapping's header line
            inside = line.rstrip().endswith(path)
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_scratch_file_is_unmapped_after_each_round(digits):
    """Rows of c_clients in the scratch file are mapped while a round uses them, then released:
    the process's file-backed memory does not grow towards the whole N x M file."""
    cfg = small_config(**MANY, train__algorithm="scaffold", record__enabled=False)
    numel = Simulator(cfg, digits).layout.numel
    budget = (cfg.train.clients_per_round + 4) * numel * 4 / 2**20
    sim = Simulator(cfg.replace({"train.state_budget_mb": budget}), digits)
    assert not sim.algorithm.in_memory
    path = str(sim.algorithm.table.memmap.filename)
    seen = []

    class During(Hook):
        def on_client_end(self, event):
            seen.append(_mapped_kib(path))

    for _ in range(2):
        sim.run_round([During()])
        assert _mapped_kib(path) == 0
    assert max(seen) > 0  # the rows were mapped while the round trained
    assert sim.algorithm.c_clients.abs().sum() > 0  # and what was written is still there
