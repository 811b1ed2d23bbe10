"""Opening run files safely: plain for closed files, SWMR with bounded retries for files marked
open for writing, and whether the process that writes a "running" file is still alive.

Torch-free; used by :mod:`driftscope.runfile.reader`.
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from driftscope.errors import RunFileError

SWMR_READ_ATTEMPTS = 10  # about 1 s of backoff in all; HDF5 defaults to 100 tries (minutes)


def strings(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()]


def one_line(err: BaseException) -> str:
    text = str(err).strip().strip("'\"").splitlines()
    return text[0] if text else type(err).__name__


# ---------------------------------------------------------------------------------- opening
_set_read_attempts: Callable[[int, int], int] | None = None


def _read_attempts_setter() -> Callable[[int, int], int] | None:
    """``H5Pset_metadata_read_attempts`` from h5py's own HDF5 library, if it can be found."""
    global _set_read_attempts
    if _set_read_attempts is None:
        here = os.path.dirname(h5py.__file__)
        candidates = glob.glob(os.path.join(here, "..", "h5py.libs", "libhdf5-*.so*"))
        candidates += glob.glob(os.path.join(here, ".dylibs", "libhdf5*.dylib"))
        for lib_path in [*candidates, "libhdf5.so"]:
            try:
                fn = ctypes.CDLL(lib_path).H5Pset_metadata_read_attempts
            except (OSError, AttributeError):
                continue
            fn.argtypes = [ctypes.c_int64, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _set_read_attempts = fn
            break
    return _set_read_attempts


def _open_swmr(path: Path) -> h5py.File:
    """SWMR read mode with few metadata read attempts (a damaged file fails fast, not in minutes)."""
    setter = _read_attempts_setter()
    if setter is None:  # no access to the library: h5py's own SWMR open
        return h5py.File(path, "r", swmr=True, libver="latest")
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    fapl.set_fclose_degree(h5py.h5f.CLOSE_STRONG)
    setter(fapl.id, SWMR_READ_ATTEMPTS)
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=fapl)
    return h5py.File(fid)


def open_file(path: Path) -> h5py.File:
    """A closed run opens plainly; one marked as open for writing (live or killed) needs SWMR."""
    try:
        return h5py.File(path, "r")
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        first = err
    try:
        return _open_swmr(path)
    except (OSError, KeyError, ValueError, RuntimeError):
        raise RunFileError(
            f"{path} cannot be read as HDF5 ({one_line(first)}): the file is truncated or "
            "damaged; copy it again or re-run the training"
        ) from None


def writer_alive(host: str | None, pid: int | None, started: float | None) -> bool:
    """Whether the process that wrote a "running" file still runs: same host and a live PID that
    started no later than the run (a recycled PID is not the writer). Unknown host: not alive;
    another host: assumed alive (it cannot be checked from here)."""
    if not host or pid is None:
        return False
    if host != platform.node():
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    if started is not None:
        begun = _process_start(pid)
        if begun is not None and begun > started + 5:
            return False
    return True


def _process_start(pid: int) -> float | None:
    """Start time of ``pid`` in seconds since the epoch (Linux /proc), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        btime = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
