"""A changed byte in a run file is an error naming what it damaged, never a different number.

Each test flips one bit of a real run file where a part that the reader trusts is stored (found
with h5py's storage offsets, or by the bytes the part holds) and reads the run back as
``analyze`` does: every read either returns exactly what the undamaged file gives or raises a
one-line :class:`RunFileError`. Chunked datasets carry HDF5's fletcher32 checksum, the small
static ones (model fields, names included; the partition) a CRC-32 in ``static_crc32``, HDF5's
own metadata (object headers, B-trees, fractal heaps) its metadata checksums.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest

from driftscope import open_run
from driftscope.analysis.tables import drift_table, layer_summary
from driftscope.errors import RunFileError
from driftscope.runfile import schema

READS: dict[str, Callable[[Any], Any]] = {
    "config": lambda run: run.config_dict,
    "status": lambda run: run.status,
    "layout": lambda run: run.layout,
    "label_histogram": lambda run: run.label_histogram,
    "metrics": lambda run: run.metrics,
    "rounds": lambda run: run.rounds,
    "probe_index": lambda run: run.probe_index,
    "resume_state": lambda run: run.resume_state(),
    "layer_summary": layer_summary,
    "drift_table": drift_table,
    "cka": lambda run: run.cka("fc3"),
}


def as_bytes(value: Any) -> Any:
    """A read's value in a form ``==`` compares exactly."""
    if isinstance(value, pd.DataFrame):
        return value.to_csv()
    if isinstance(value, np.ndarray):
        return value.shape, value.dtype.str, value.tobytes()
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        return value[0], {k: as_bytes(v) for k, v in value[1].items()}  # resume_state
    return repr(value)


def read_all(path: Path) -> dict[str, Any]:
    """Each read's value, or "error: ..." for a RunFileError (anything else fails the test)."""
    out: dict[str, Any] = {}
    try:
        run = open_run(path)
    except RunFileError as err:
        return {"open": f"error: {err}"}
    with run:
        for name, read in READS.items():
            try:
                out[name] = as_bytes(read(run))
            except RunFileError as err:
                assert "\n" not in str(err), err
                out[name] = f"error: {err}"
    return out


def flipped(src: Path, dst: Path, offset: int) -> Path:
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 0x04]))
    return dst


def same_or_error(clean: dict[str, Any], damaged: dict[str, Any]) -> list[str]:
    """The reads that returned something else than the undamaged file's, without an error."""
    return [
        name
        for name, value in damaged.items()
        if not (isinstance(value, str) and value.startswith("error: ")) and value != clean[name]
    ]


def storage_offset(path: Path, name: str) -> int:
    """The file offset of the middle of dataset ``name``'s first chunk (or contiguous data)."""
    with h5py.File(path, "r") as f:
        ds = f[name]
        if ds.chunks is None:
            return int(ds.id.get_offset()) + int(ds.id.get_storage_size()) // 2
        info = ds.id.get_chunk_info(0)
        return int(info.byte_offset) + int(info.size) // 3


@pytest.fixture(scope="module")
def clean(make_run) -> tuple[Path, dict[str, Any]]:
    path = make_run()
    values = read_all(path)
    assert not any(isinstance(v, str) and v.startswith("error: ") for v in values.values())
    return path, values


@pytest.mark.parametrize(
    ("dataset", "read"),
    [
        (schema.cka_path("linear", "classifier.4"), "layer_summary"),
        (schema.cka_path("rbf", "classifier.4"), "drift_table"),
        (schema.LABEL_HISTOGRAM, "label_histogram"),
        (schema.PROBE_INDEX, "probe_index"),
        (schema.STATE_ROUND, "resume_state"),
        (schema.STATUS, "status"),
        (schema.metric_path("test_accuracy"), "metrics"),
        (schema.param_field("offset"), "layout"),
    ],
)
def test_a_flipped_data_byte_is_an_error_naming_the_dataset(tmp_path, clean, dataset, read):
    src, values = clean
    path = flipped(src, tmp_path / "r.h5", storage_offset(src, dataset))
    damaged = read_all(path)
    assert same_or_error(values, damaged) == []
    assert damaged[read].startswith("error: ") and f"{dataset} is damaged" in damaged[read]


def test_flipped_bytes_in_names_and_the_config_text_are_errors(tmp_path, clean):
    """The layer names (variable-length strings in HDF5's global heap, and link names in the
    groups' fractal heaps) and the config's JSON text: each occurrence flipped in turn."""
    src, values = clean
    data = src.read_bytes()
    with h5py.File(src, "r") as f:
        config = str(f.attrs[schema.ATTR_CONFIG])
    at = data.find(config.encode()[:60])
    assert at >= 0
    offsets = [at + len(config) // 2]  # the config attribute's text
    for name in (rb"fc3", rb"classifier.4"):  # every copy of a layer's label and name
        offsets += [m.start() + 2 for m in re.finditer(re.escape(name), data)]
    assert len(offsets) > 3
    for offset in offsets:
        damaged = read_all(flipped(src, tmp_path / "r.h5", offset))
        assert same_or_error(values, damaged) == [], offset
    damaged = read_all(flipped(src, tmp_path / "r.h5", offsets[0]))
    assert "config is damaged (CRC-32 mismatch)" in damaged["config"]


@pytest.mark.parametrize("signature", [b"FRHP", b"FHDB", b"BTHD", b"BTLF", b"GCOL"])
def test_flipped_bytes_in_hdf5_metadata_are_errors_not_absent_parts(tmp_path, clean, signature):
    """A damaged fractal heap or B-tree (where a group with many members keeps its links): the
    group's members cannot be looked up. That is damage; taken for "absent" it made a recorded
    run look unrecorded (no rounds, no drift) without a word."""
    src, values = clean
    data = src.read_bytes()
    starts = [m.start() for m in re.finditer(signature, data)]
    assert starts, signature
    errors = 0
    for start in starts[:3]:
        for delta in (12, 30, 60):
            damaged = read_all(flipped(src, tmp_path / "r.h5", start + delta))
            assert same_or_error(values, damaged) == [], (signature, start, delta)
            errors += any(isinstance(v, str) for v in damaged.values())
    assert errors > 0


def test_a_status_flip_is_damage(tmp_path, clean):
    src, _ = clean
    path = flipped(src, tmp_path / "r.h5", storage_offset(src, schema.STATUS))
    with open_run(path) as run:
        with pytest.raises(RunFileError, match=r"status is damaged \('compl.*' is none of"):
            _ = run.status
