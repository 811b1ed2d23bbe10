"""Output paths: checked before any work starts, one writer at a time, write errors in one line.

``check_output`` refuses a directory, an existing file without ``--overwrite``, an empty path or
one ending in a separator, a name too long for the run's side files or a path whose folder cannot
be created; ``check_folder`` creates an output folder (figures, compare, reproduce) or refuses it
in one line; :class:`Lock` is the writer's ``flock`` on ``<run file>.lock`` (host and
PID inside, released by the kernel if the process dies), under which :func:`remove_stale_temps`
deletes the temporary files of killed writers; :func:`room_shortfall` says when the disk leaves no
room for another round; :func:`write_error` names what a failed write ran into. Used by
:mod:`driftscope.runfile.writer` and the CLI.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import platform
import resource
from pathlib import Path

from driftscope.errors import RunFileError
from driftscope.runfile import schema


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


class RunWriteError(RunFileError, OSError):
    """A write that failed (disk full, size limit, I/O error): a one-line RunFileError that is
    also an OSError, so callers that handle OSError keep working."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Lock:
    """An exclusive ``flock`` on ``<path>.lock`` holding the writer's host and PID."""

    def __init__(self, path: Path) -> None:
        self.path = schema.lock_path(path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunFileError(unwritable(path, err)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunFileError(
                f"{path} is being written by {holder}: wait for that run to end or choose "
                "another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{platform.node()} pid {os.getpid()}\n".encode())
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None


def remove_stale_temps(path: Path) -> None:
    """Delete the temporary files (:func:`schema.temp_path`) of earlier writers on ``path`` that
    were killed before their first commit. Call it under ``path``'s :class:`Lock`: every writer
    holds it for its whole life, so no living writer owns one."""
    prefix = f".{path.name}."
    for stale in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        if stale.name[len(prefix) : -len(".tmp")].isdigit():
            with contextlib.suppress(OSError):
                stale.unlink()


def room_shortfall(size: int, most: int, folder: Path) -> str | None:
    """Why the next round of a run file of ``size`` bytes in ``folder`` may not fit: the free disk
    (or the file-size limit) leaves less than ``most``, the most one round has added so far, plus a
    margin. None when it fits or the room cannot be told.

    HDF5 cannot recover from a write that fails half-way (its metadata may then point past the end
    of the file), so the writer stops before such a round rather than during it."""
    try:
        vfs = os.statvfs(folder)
    except (OSError, ValueError):
        return None
    room = vfs.f_bavail * vfs.f_frsize
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        room = min(room, limit - size)
    if most <= 0 or room >= most + most // 4 + (1 << 16):
        return None
    what = "file size limit" if limit != resource.RLIM_INFINITY and room == limit - size else "disk"
    return f"the {what} leaves {room:,} bytes, too few for another round ({most:,} bytes)"


def unwritable(path: Path, err: OSError) -> str:
    reason = {
        errno.ENOTDIR: "a part of the path is a file, not a directory",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "the file system is read-only",
        errno.ENOSPC: "no space left on the device",
        errno.EISDIR: "it is a directory",
        errno.EEXIST: "a part of the path is a file, not a directory",  # mkdir over a file
        errno.ENAMETOOLONG: "the file name is too long",
    }.get(err.errno or 0, err.strerror or one_line(err))
    return f"cannot write {path}: {reason}; choose another --out"


#: the most characters the writer's side files add to the run file's name (``.NAME.PID.tmp``,
#: ``NAME.lock``, ``.NAME.resume``)
SIDE_FILE_CHARS = 16


def check_output(path: str | os.PathLike, overwrite: bool = False, what: str = "--out") -> Path:
    """Check that a file can be written at ``path`` before any work starts: not a directory, not an
    existing file without ``overwrite``, not empty or ending in a separator (both name a folder),
    its directory creatable. One-line :class:`RunFileError`."""
    text = os.fspath(path)
    if not text:
        raise RunFileError(f"{what} is empty: give it a file path")
    if text.endswith(os.sep):
        raise RunFileError(
            f"{text} ends in '{os.sep}', so it names a folder: give {what} a file path "
            f"such as {text}run.h5"
        )
    path = Path(text)
    try:
        if path.is_dir():
            raise RunFileError(f"{path} is a directory: give {what} a file path")
        if path.exists() and not overwrite:
            raise RunFileError(f"{path} already exists: choose another {what} or pass --overwrite")
        path.parent.mkdir(parents=True, exist_ok=True)
        limit = os.pathconf(path.parent, "PC_NAME_MAX") - SIDE_FILE_CHARS
        if len(os.fsencode(path.name)) > limit:
            raise RunFileError(
                f"cannot write {path}: the file name is too long (at most {limit} bytes here, "
                f"leaving room for the writer's side files); choose a shorter {what}"
            )
    except OSError as err:
        raise RunFileError(unwritable(path, err).replace("--out", what)) from None
    if not os.access(path.parent, os.W_OK):
        raise RunFileError(
            f"cannot write {path}: its directory is read-only; choose another {what}"
        )
    return path


def write_error(err: Exception) -> str:
    text = str(err).lower()
    code = getattr(err, "errno", None)
    if code == errno.ENOSPC or "no space" in text:
        return "no space left on the device; free space and re-run"
    if code == errno.EFBIG or "file too large" in text:
        return "the file size limit (ulimit -f) was reached; raise it and re-run"
    return f"{one_line(err)}; re-run"


def check_folder(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create the output folder ``path`` (with its parents) before any work starts; an empty path,
    a file there or an uncreatable folder is a one-line :class:`RunFileError`."""
    text = os.fspath(path)
    if not text:
        raise RunFileError(f"{what} is empty: give it a folder")
    folder = Path(text)
    try:
        if folder.exists() and not folder.is_dir():
            raise RunFileError(f"{folder} is a file, not a folder: give {what} a folder")
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = unwritable(folder, err).removeprefix(f"cannot write {folder}: ")
        raise RunFileError(f"cannot create {folder}: {reason.replace('--out', what)}") from None
    if not os.access(folder, os.W_OK):
        raise RunFileError(f"cannot write into {folder}: it is read-only; choose another {what}")
    return folder
