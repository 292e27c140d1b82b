"""Atomic writes and folder locks: a failed or interrupted write never leaves a half file behind,
and one process at a time writes into a folder.

Everything is written to a temporary name beside the target (`.NAME.<random>.tmp`), then
renamed over it; rename within one folder is atomic on POSIX and Windows. Temporary files
and folders are made with the umask's modes (0644 and 0755 under umask 022), like any
other file, so a teammate can read a run. `clean_leftovers` tidies what a killed write left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; `hold_lock` always succeeds there
    fcntl = None

NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_LEFTOVER = re.compile(r"^\.(?P<name>.+?)\.(?:[A-Za-z0-9_]{6,}\.tmp|old)$")  # .NAME.<random>.tmp, .NAME.old


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    # 0o666 and O_EXCL rather than mkstemp, whose 0600 would hide the file from everyone else
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path` whole, on failure it vanishes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    tmp.mkdir(0o777)  # the umask decides, as for any folder (mkdtemp would make it 0700)
    try:
        yield tmp
        _follow_umask(tmp)
        if path.exists():
            # Killed between these two renames, `path` is missing and `.NAME.old` holds the
            # previous version whole: clean_leftovers puts it back.
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _follow_umask(folder: Path) -> None:
    """Give what a library wrote into `folder` the modes of a normal file: safetensors, for one,
    writes its files 0600, which would hide a run's weights from everyone else on the machine."""
    mask = _umask()
    for root, folders, files in os.walk(folder):
        for names, mode in ((files, 0o666), (folders, 0o777)):
            for path in (os.path.join(root, name) for name in names):
                if not os.path.islink(path):
                    os.chmod(path, mode & ~mask)


def _umask() -> int:
    with contextlib.suppress(OSError, ValueError):  # Linux says it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def clean_leftovers(folder: Path) -> list[str]:
    """Remove the temporary files and folders of writes that were killed in `folder`; put back a
    `.NAME.old` whose replacement never arrived. Returns the names removed or put back."""
    if not folder.is_dir():
        return []
    done = []
    for entry in sorted(folder.iterdir()):
        match = _LEFTOVER.match(entry.name)
        if not match:
            continue
        target = folder / match["name"]
        if entry.name.endswith(".old") and not target.exists():
            os.replace(entry, target)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        done.append(entry.name)
    return done


class HeldLock:
    """An exclusive advisory lock on one file, held while this object's descriptor is open."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    def release(self) -> None:
        """Empty the holder's note and let go (the kernel also lets go when the process ends)."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        os.close(self.fd)  # closing the only descriptor releases the flock
        self.fd = -1


def hold_lock(path: Path, note: str) -> HeldLock | str:
    """Take the lock on `path` without waiting and write `note` (who holds it) into it.

    Returns the HeldLock, or, when another open file holds it, the note its holder wrote. A
    lock whose process died was released by the kernel with it, so it is simply taken over.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_note(fd)
            os.close(fd)
            return holder
        except OSError as error:  # some network and FUSE mounts have no locks: writing goes on unguarded
            if error.errno not in NO_LOCKS:
                os.close(fd)
                raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, note.encode("utf-8"), 0)
    except OSError:  # a full disk: the lock holds all the same, only the note is missing
        pass
    return HeldLock(path, fd)


@contextlib.contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path`, waiting for whoever holds it now: two processes
    about to make the same cached file take turns, and the second finds the first one's result."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # a read-only cache: nothing can be written there, so there is nothing to guard
        yield
        return
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as error:  # a filesystem without locks: go on unguarded
                if error.errno not in NO_LOCKS:
                    raise
        yield
    finally:
        os.close(fd)  # releases the flock


def _read_note(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()
    return ""
