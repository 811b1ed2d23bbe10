"""Whole-chunk writes of stored updates and their checksums.

HDF5 is the oracle: a dataset written with :class:`ChunkWriter` reads back through h5py as the
same numbers, a fletcher32 chunk written here passes HDF5's own check, and a flipped byte is a read
error: HDF5's for fletcher32 chunks, driftscope's CRC-32 check for the updates of a run.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from driftscope import open_run
from driftscope.errors import RunFileError
from driftscope.runfile import schema
from driftscope.runfile.h5write import CHUNK_BYTES, ChunkWriter, fletcher32, growable, update_chunks


def _hdf5_fletcher32() -> ctypes._CFuncPtr | None:
    """HDF5's own ``H5_checksum_fletcher32`` from the library h5py loaded, if it exports it."""
    libs = sorted(Path(h5py.__file__).parent.parent.glob("h5py.libs/libhdf5-*.so*"))
    try:
        lib = ctypes.CDLL(str(libs[0])) if libs else ctypes.CDLL("libhdf5.so")
        fn = lib.H5_checksum_fletcher32
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_uint32
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return fn


def _slow_fletcher32(data: bytes) -> int:
    """HDF5's H5_checksum_fletcher32 transcribed: big-endian 16-bit words, sums folded with an
    end-around carry every 360 words (so a sum is 0 only for all-zero data)."""
    sum1 = sum2 = 0
    words = [(data[i] << 8) | data[i + 1] for i in range(0, len(data), 2)]
    for start in range(0, len(words), 360):
        for w in words[start : start + 360]:
            sum1 += w
            sum2 += sum1
        sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
        sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
    sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    return (sum2 << 16) | sum1


def _cases(rng: np.random.Generator, nbytes: int) -> list[np.ndarray]:
    rand = rng.integers(0, 256, nbytes, dtype=np.uint8)
    last = np.zeros(nbytes, np.uint8)
    last[-1] = 1
    first = np.zeros(nbytes, np.uint8)
    first[0] = 0xFF
    return [rand, np.zeros(nbytes, np.uint8), np.full(nbytes, 0xFF, np.uint8), last, first]


SIZES = [2, 4, 6, 720, 722, 131_068, 131_070, 131_072, 262_150, 1 << 20, 62 * 65535 + 10]


@pytest.mark.parametrize("nbytes", SIZES)
def test_fletcher32_equals_hdf5s(nbytes):
    rng = np.random.default_rng(nbytes)
    cases = _cases(rng, nbytes)
    got = fletcher32(np.stack(cases))  # several chunks at once, as rows
    reference = _hdf5_fletcher32()
    for case, value in zip(cases, got, strict=True):
        if reference is not None:
            assert value == reference(case.ctypes.data, case.nbytes)
        if nbytes <= 1 << 20:  # the slow transcription: the smaller sizes
            assert value == _slow_fletcher32(case.tobytes())


def test_fletcher32_of_rows_inside_a_wider_buffer():
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (3, 1000 + 4), dtype=np.uint8)
    want = [_slow_fletcher32(row[:1000].tobytes()) for row in wide]
    assert list(fletcher32(wide[:, :1000])) == want


def _dataset(
    f: h5py.File, name: str, numel: int, cols: int, dtype: str, fletcher: bool, per_chunk: int = 3
):
    chunks = (1, per_chunk, cols)
    return growable(f, name, (3, numel), dtype, ("u", "c", "v"), chunks, fletcher32=fletcher)


@pytest.mark.parametrize("per_chunk", [3, 1])  # all clients' columns, or one client's row
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("fletcher", [True, False])
def test_chunk_writes_read_back_through_hdf5(tmp_path, dtype, fletcher, per_chunk):
    """Rows written as whole chunks (an edge chunk included), in SWMR mode on a growing dataset,
    read back as the same numbers; fletcher32 chunks pass HDF5's check; the CRC-32s are zlib's."""
    rng = np.random.default_rng(1)
    path = tmp_path / "x.h5"
    rows = [rng.standard_normal((3, 1000), dtype=np.float32) for _ in range(3)]
    with h5py.File(path, "w", libver="latest") as f:
        # chunks of 384 + 384 + 232 (edge) columns
        ds = _dataset(f, "u", 1000, 384, dtype, fletcher, per_chunk)
        # one chunk smaller than a row of 65535 words
        small = _dataset(f, "b", 7, 7, dtype, fletcher, per_chunk)
        f.swmr_mode = True
        writer = ChunkWriter()
        sums = []
        for r in rows:
            sums.append(writer.append(ds, r))
            writer.append(small, r[:, :7])
            f.flush()
    with h5py.File(path, "r") as f:
        assert f["u"].fletcher32 == fletcher
        back = f["u"][()]
        np.testing.assert_array_equal(back, np.stack(rows).astype(dtype))
        np.testing.assert_array_equal(f["b"][()], np.stack(rows)[:, :, :7].astype(dtype))
        want = [[zlib.crc32(row.astype(dtype).tobytes()) for row in r] for r in rows]
        np.testing.assert_array_equal(sums, want)
        np.testing.assert_array_equal(sums, [schema.row_crc32(b) for b in back])


def test_a_flipped_byte_in_a_fletcher32_chunk_is_an_hdf5_read_error(tmp_path):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w", libver="latest") as f:
        ds = _dataset(f, "u", 1000, 500, "float32", True)
        ChunkWriter().append(ds, np.ones((3, 1000), np.float32))
    with h5py.File(path, "r") as f:
        info = f["u"].id.get_chunk_info(1)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 100)
        byte = fh.read(1)
        fh.seek(info.byte_offset + 100)
        fh.write(bytes([byte[0] ^ 0x01]))
    with h5py.File(path, "r") as f:
        f["u"][0, :, :500]  # the other chunk still reads
        with pytest.raises(OSError):
            f["u"][0, :, 500:]


def _flip_in_chunk(path: Path, name: str, coord: tuple[int, ...]) -> None:
    with h5py.File(path, "r") as f:
        info = f[name].id.get_chunk_info_by_coord(coord)
        offset = info.byte_offset + info.size // 2
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x10]))


def test_stored_updates_carry_a_crc_and_a_flipped_byte_is_an_error(tmp_path, make_run):
    src = make_run()  # stores every round's updates
    name = "classifier.4.weight"
    with h5py.File(src, "r") as f:
        ds = f[schema.updates_path(name)]
        assert not ds.fletcher32  # the bulk of the file: whole chunks, checked by CRC-32
        assert ds.attrs[schema.UPDATE_CHECKSUM_ATTR] == schema.UPDATE_CHECKSUM_CRC32
        crc = f[schema.UPDATE_CRC]
        assert crc.fletcher32
        assert name in json.loads(crc.attrs[schema.UPDATE_CRC_PARAMS])
        assert f[schema.gram_path(name)].fletcher32  # everything else keeps fletcher32
        last = ds.shape[0] - 1
    with open_run(src) as run:
        good = run.updates("fc3")
        assert good.shape[0] == len(run.update_rounds) == 3
    path = tmp_path / "flipped.h5"
    shutil.copy(src, path)
    _flip_in_chunk(path, schema.updates_path(name), (last, 0, 0))  # the last round's chunk
    with open_run(path) as run:
        run.updates("classifier.0.weight")  # other parameters still read
        run.updates(name, round=int(run.update_rounds[0]))  # and the intact rounds
        with pytest.raises(RunFileError, match=r"updates/classifier\.4\.weight is damaged"):
            run.updates("fc3")
        with pytest.raises(RunFileError, match="CRC-32 mismatch"):
            run.updates(name, round=int(run.update_rounds[-1]))


def test_update_chunks_are_one_clients_row_when_rows_are_large():
    # a VGG-11 conv weight (2,359,296 float32 values): 9 chunks of 262,144 per client, 1 MiB
    assert update_chunks(5, 2_359_296, 4) == (1, 1, 262_144)
    # a bias: all clients in one chunk
    assert update_chunks(5, 512, 4) == (1, 5, 512)
    for s, numel, item in [(5, 65_536, 4), (10, 65_535, 4), (100, 30_000, 2), (3, 10**7, 2)]:
        chunks = update_chunks(s, numel, item)
        assert chunks[1] in (1, s)
        assert chunks[1] * chunks[2] * item <= CHUNK_BYTES
        pieces = -(-numel // chunks[2])
        assert pieces * chunks[2] - numel < pieces  # columns split evenly: little padding


def test_a_file_written_before_the_crc_keeps_fletcher32_when_its_recorder_goes_on(tmp_path):
    """A run file from before the CRC (fletcher32 on the updates, chunks across clients, no
    update_crc), resumed: the recorder's whole-chunk writes carry fletcher32, which HDF5 checks."""
    import torch

    from driftscope.config import RecordConfig
    from driftscope.engine.recorder import Recorder
    from driftscope.models.layout import LayerInfo, ModelLayout, ParamInfo
    from driftscope.runfile.writer import RunWriter

    params = (ParamInfo("w", "fc", "body", (40, 30), 0), ParamInfo("b", "fc", "head", (40,), 1200))
    layout = ModelLayout(params, (LayerInfo("fc", "fc1", "Linear", "mixed", ("w", "b"), 1240),))
    s = 3
    writer = RunWriter.create(
        tmp_path / "old.h5", config={"seed": 0}, layout=layout, label_histogram=np.ones((s, 2))
    )
    f = writer.file
    growable(f, schema.RECORD_ROUND, (), np.int64, schema.AX_RECORD)  # the old declaration
    growable(f, schema.UPDATE_ROUND, (), np.int64, schema.AX_UPDATE_ROUND)
    for p in params:
        growable(
            f,
            schema.updates_path(p.name),
            (s, p.numel),
            "float32",
            schema.AX_UPDATES,
            (1, s, min(512, p.numel)),
        )
    cfg = RecordConfig(probe_size=0, updates_every=1)
    rec = Recorder(writer, cfg, layout, s, s, model_factory=lambda: torch.nn.Identity())
    writer.start_swmr()
    updates = [torch.randn(s, layout.numel) for _ in range(2)]
    for r, d in enumerate(updates):
        rec.store_updates(r, d)
    writer.close()
    with h5py.File(tmp_path / "old.h5", "r") as f:
        assert schema.UPDATE_CRC not in f
        for p in params:
            ds = f[schema.updates_path(p.name)]
            assert ds.fletcher32
            want = torch.stack(updates)[:, :, p.offset : p.offset + p.numel].numpy()
            np.testing.assert_array_equal(ds[()], want)  # HDF5 checked every chunk
