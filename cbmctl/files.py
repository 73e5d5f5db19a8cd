"""File helpers every writer shares: replace a file whole (readers and a later run see the old file or the
new one, never a part of one, whatever moment a kill or a power cut lands), and an exclusive lock between
processes that work on the same file.

    with atomic_path(cache) as tmp:          # any writer (h5py, np.savez, torch.save) writes to `tmp`
        h5py.File(tmp, "w") ...
    with atomic_write(record, "w") as f:     # or a file object
        f.write(text)
    with file_lock(cache, note=log):         # one process at a time; the second waits, saying so once
        ...
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
import secrets
import signal
from pathlib import Path

from cbmctl.errors import CbmctlError

FAULT_ENV = "CBMCTL_FAULT"
LOCK_SUFFIX = ".lock"


def slug(text: str, empty: str = "x") -> str:
    """`text` as part of a file name cbmctl makes (a cache, a run directory): letters, digits, '.', '_' and
    '-' kept, every other character '-', no '-' at either end; `empty` when nothing is left."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in str(text)).strip("-") or empty


def cbmctl_home() -> Path:
    """Where cbmctl keeps what it learns about this machine ($CBMCTL_HOME, default ~/.cache/cbmctl): weight
    hashes, the open_clip tag index of other open_clip versions, the text store of cache-less commands."""
    return Path(os.environ.get("CBMCTL_HOME") or Path.home() / ".cache" / "cbmctl")


def fault_point(name: str, path=None) -> None:
    """Crash-test hook, so tests can prove a write is safe at exactly one moment. $CBMCTL_FAULT is
    `POINT[@GLOB][=stop]`: at the point named POINT (and, with @GLOB, only for a file whose name matches
    GLOB) the process kills itself with SIGKILL, as `kill -9` or a power cut would; with `=stop` it stops
    itself (SIGSTOP) instead, holding whatever it holds, until a SIGCONT."""
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    wanted, _, action = wanted.partition("=")
    point, _, glob = wanted.partition("@")
    if point != name or (glob and not (path is not None and fnmatch.fnmatch(Path(path).name, glob))):
        return
    stop = action == "stop" and hasattr(signal, "SIGSTOP")
    os.kill(os.getpid(), signal.SIGSTOP if stop else getattr(signal, "SIGKILL", signal.SIGTERM))


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; set it straight back
    os.umask(mask)
    return mask


def temp_path_beside(path) -> Path:
    """A hidden, unique name in `path`'s folder: renaming it over `path` is atomic (same filesystem)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _fsync_dir(folder: Path) -> None:
    # the rename itself must reach the disk too; not every platform can open a directory
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def require_replaceable(path) -> None:
    """A one-line error when `path` is a pipe, device, socket or directory: what atomic_path may replace is a
    file (or a link) or nothing; checked where a file is written and, earlier, where a command plans to."""
    from cbmctl.data_files import special_kind
    kind = special_kind(path)
    if kind is not None:
        from cbmctl.sanitize import safe_text
        raise CbmctlError(f"{safe_text(path)} is {kind}, not a file: cbmctl never replaces it; choose another path")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; when the block ends normally the file written there is fsynced
    and renamed over `path` in one step. On an exception (or a kill) `path` keeps its previous content and
    the temporary file is removed (or, after a kill, left as a hidden `.NAME.PID.XXXX.tmp`). A pipe, device,
    socket or directory at `path` is refused, never replaced (as root, `--cache /dev/zero --overwrite` would
    otherwise rename a file over the device node)."""
    path = Path(path)
    require_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(path)
    try:
        yield tmp
        fault_point("atomic:before-fsync", path)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        # some writers (safetensors) create their file 0600: give it what a plain open() would (0666 - umask)
        os.chmod(tmp, 0o666 & ~_umask())
        fault_point("atomic:before-replace", path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        fault_point("atomic:after-replace", path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", encoding: str | None = None):
    """Like open(path, mode) for writing, but the file appears at `path` whole, only when the block ends."""
    if not mode.startswith("w"):
        raise ValueError("atomic_write replaces a file: use mode 'w' or 'wb'")
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding if "b" not in mode else None) as handle:
            yield handle


def write_bytes_atomic(path, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def write_text_atomic(path, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)


# Locks this process holds, path -> depth: a nested file_lock on the same path is a no-op instead of a
# deadlock (flock locks belong to an open file, so a second open in the same process would block).
_HELD: dict[str, list] = {}


def lock_path(path) -> Path:
    """The (hidden) lock file of `path`: `.NAME.lock` beside it; it stays after use, which is harmless."""
    path = Path(path)
    return path.with_name(f".{path.name}{LOCK_SUFFIX}")


def in_use(path) -> bool:
    """Whether a process (another one, or this one) holds file_lock on `path` right now: a run being trained
    is alive, not interrupted. Read by taking the lock for an instant; a lock file that cannot be opened
    counts as free (the work that needs it will say why)."""
    if str(Path(path).resolve()) in _HELD:
        return True
    target = lock_path(path)
    if not target.exists():
        return False
    from filelock import FileLock, Timeout
    lock = FileLock(str(target))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False


@contextlib.contextmanager
def file_lock(path, *, wait: bool = True, note=None, doing: str = "working on"):
    """Hold an exclusive lock on `path` between processes (the file `.NAME.lock` beside it) for the block.

    When another process holds it: with `wait`, `note` (a callable taking one line) is told once and the
    block waits for the lock; without, a CbmctlError says the file is in use. A lock dies with its process,
    so a killed holder never leaves it stuck. Re-entrant within a process."""
    key = str(Path(path).resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    from filelock import FileLock, Timeout
    target = lock_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise CbmctlError(f"{path} is in use: another cbmctl process is {doing} it; wait for it to finish"
                              ) from None
        if note:
            note(f"waiting: another cbmctl process is {doing} {path} (Ctrl-C to stop waiting)")
        lock.acquire()
    except OSError as error:
        raise CbmctlError(f"cannot lock {path} ({error.strerror or error}): is its folder writable?") from None
    _HELD[key] = [lock, 1]
    try:
        yield
    finally:
        del _HELD[key]
        lock.release()
