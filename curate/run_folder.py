"""The output folder of a run as storyloom's own: the names it writes, the lock that lets one
run at a time write there, and clearing it for ``--overwrite``.

A run refuses a folder that holds anything storyloom did not write (:func:`foreign_files`)
unless ``--overwrite`` is given, and even then it deletes only what it wrote: a user's own
``clips/`` folder given as ``--output`` by mistake loses nothing. What storyloom writes is
recognised by name, and a Parquet shard also by the table name in its metadata, so a user's
``clips/part-00000-of-00001.parquet`` is not taken for one of ours.

:class:`RunLock` is an exclusive lock on ``OUT/.storyloom.lock``: an ``flock`` on the file,
which the kernel releases when the holder dies however it dies, with the holder's pid, host
and start time written inside for the message a second run gets. A lock file left by a run
that died is stale: the next run takes it over and says so. On a filesystem without
``flock`` the pid and host decide: a holder on this host that is no longer running is stale;
one on another host is assumed alive (the message says which file to remove if it is not).

Plain Python and pyarrow: no Beam.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.parquet as pq

from schemas import MANIFEST_NAME
from schemas.tables import META_TABLE

from .errors import OutputError

logger = logging.getLogger(__name__)

#: the tables a run publishes, in the order the manifest lists them
TABLES = ("clips", "stories", "failures")
WORK_DIR = "_work"
STAGING_DIR = "_staging"
#: the corpus phase's scratch: what it spills to disk between its steps (curate.corpus)
CORPUS_DIR = "_corpus"
LOCK_NAME = ".storyloom.lock"
#: in ``_work``, a worker process' counts of a run's videos for ``--max-failure-rate``
#: (``_rate-<run>-<process>.json``), which every process of the run reads
RATE_PREFIX = "_rate-"
#: the run's self-contained HTML report, written beside the tables, and its stage timings
REPORT_NAME = "report.html"
TIMING_NAME = "_timing.json"

_SHARD = re.compile(r"part-\d{5}-of-\d{5}\.parquet")
_WORK_FILE = re.compile(r"w-[0-9a-f]{20,64}\.parquet")
_RATE_FILE = re.compile(rf"{RATE_PREFIX}[0-9a-f]+-[0-9a-f]+\.json")
#: a file written under a temporary name (``.NAME.tmp-...``) and renamed when complete
_TEMPORARY = re.compile(r"\..+\.tmp-[\w.-]+")
_PROBE = re.compile(r"\.write-probe-[0-9a-f]+(\.done)?")
_OLD_TABLE = re.compile(rf"\.({'|'.join(TABLES)})\.old-[0-9a-f]+")
_SCRATCH_FILE = re.compile(r"[\w-]+\.(json|npy|parquet|sig|bin)")
#: files at the top of a run folder that storyloom writes
TOP_FILES = (MANIFEST_NAME, LOCK_NAME, REPORT_NAME, TIMING_NAME)


# --- which files are storyloom's ----------------------------------------------------------------


def is_shard(path: Path, table: str) -> bool:
    """A published or staged shard of ``table`` written by storyloom (name and metadata)."""
    if not _SHARD.fullmatch(path.name) or not path.is_file():
        return False
    try:
        meta = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError):
        return False
    return meta.get(META_TABLE) == table.encode()


def _owned_in_table_dir(folder: Path, table: str) -> Iterator[tuple[Path, bool]]:
    for entry in sorted(folder.iterdir()):
        ours = (entry.is_file() and _TEMPORARY.fullmatch(entry.name) is not None) or is_shard(
            entry, table
        )
        yield entry, ours


def _owned_in_work_dir(folder: Path) -> Iterator[tuple[Path, bool]]:
    for entry in sorted(folder.iterdir()):
        name = entry.name
        ours = entry.is_file() and bool(
            _WORK_FILE.fullmatch(name)
            or _RATE_FILE.fullmatch(name)
            or _TEMPORARY.fullmatch(name)
            or name == "_config.json"
        )
        yield entry, ours


def _owned_in_scratch(folder: Path) -> Iterator[tuple[Path, bool]]:
    """The corpus phase's scratch, folder by folder (its files have names of its own)."""
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            yield entry, False
        elif entry.is_dir():
            yield from _owned_in_scratch(entry)
        else:
            name = entry.name
            ours = entry.is_file() and bool(
                _SCRATCH_FILE.fullmatch(name) or _TEMPORARY.fullmatch(name)
            )
            yield entry, ours


def _entries(out: Path) -> Iterator[tuple[Path, bool]]:
    """Every entry of a run folder, and whether storyloom wrote it (folders of ours are
    opened: an entry of theirs inside one of ours is theirs)."""
    for entry in sorted(out.iterdir()):
        name = entry.name
        if entry.is_symlink():
            yield entry, False
        elif entry.is_dir() and name in TABLES:
            yield from _owned_in_table_dir(entry, name)
        elif entry.is_dir() and name == WORK_DIR:
            yield from _owned_in_work_dir(entry)
        elif entry.is_dir() and name == CORPUS_DIR:
            yield from _owned_in_scratch(entry)
        elif entry.is_dir() and name == STAGING_DIR:
            for sub in sorted(entry.iterdir()):
                if sub.is_dir() and not sub.is_symlink() and sub.name in TABLES:
                    yield from _owned_in_table_dir(sub, sub.name)
                else:
                    yield sub, False
        elif entry.is_dir() and (m := _OLD_TABLE.fullmatch(name)):
            yield from _owned_in_table_dir(entry, m.group(1))
        elif entry.is_file():
            yield (
                entry,
                bool(name in TOP_FILES or _TEMPORARY.fullmatch(name) or _PROBE.fullmatch(name)),
            )
        else:
            yield entry, False


def _is_our_name(out: Path, entry: Path) -> bool:
    """Whether storyloom writes a file or folder of ``entry``'s name where it is (a foreign
    entry there would be written over, or written through)."""
    if entry.parent == out:
        return entry.name in (*TOP_FILES, *TABLES, WORK_DIR, STAGING_DIR, CORPUS_DIR)
    if entry.parent.name in TABLES or entry.parent.name == WORK_DIR:
        return bool(
            _SHARD.fullmatch(entry.name)
            or _WORK_FILE.fullmatch(entry.name)
            or _RATE_FILE.fullmatch(entry.name)
        )
    return False


def foreign_files(path: str | os.PathLike[str]) -> list[Path]:
    """What ``path`` holds that storyloom did not write (empty for a new or own folder)."""
    out = Path(path)
    if not out.is_dir():
        return []
    return [entry for entry, ours in _entries(out) if not ours]


def check_ownership(path: str | os.PathLike[str], *, overwrite: bool) -> None:
    """Refuse a folder holding files storyloom did not write, unless ``overwrite``; with it,
    say that they stay as they are."""
    foreign = foreign_files(path)
    if not foreign:
        return
    out = Path(path)
    example = foreign[0]
    more = f" ({len(foreign)} in all)" if len(foreign) > 1 else ""
    taken = [f for f in foreign if _is_our_name(out, f)]
    if taken:
        raise OutputError(
            f"the output folder holds {taken[0]}, which storyloom did not write but would write "
            "over (a name of its own); move it away, or use a new or empty folder",
            uri=str(out),
        )
    if not overwrite:
        raise OutputError(
            f"the output folder holds files storyloom did not write, e.g. {example}{more}; "
            "use a new or empty folder, or --overwrite to write beside them (they are kept)",
            uri=str(out),
        )
    logger.warning(
        "%s holds files storyloom did not write (e.g. %s%s); they are left as they are",
        out,
        example,
        more,
    )


def remove_owned(folder: Path, table: str | None = None) -> None:
    """Delete the files storyloom wrote in ``folder`` (a table, staging or work folder, or an
    old table folder), then the folder if nothing else is left in it."""
    if not folder.is_dir() or folder.is_symlink():
        return
    if table is not None:
        entries = _owned_in_table_dir(folder, table)
    elif folder.name == WORK_DIR:
        entries = _owned_in_work_dir(folder)
    elif folder.name == CORPUS_DIR:
        entries = _owned_in_scratch(folder)
    else:  # staging: one folder per table
        for sub in list(folder.iterdir()):
            if sub.is_dir() and not sub.is_symlink() and sub.name in TABLES:
                remove_owned(sub, sub.name)
        entries = iter(())
    for entry, ours in list(entries):
        if ours:
            entry.unlink(missing_ok=True)
    if folder.name == CORPUS_DIR:  # its folders, deepest first, where nothing else is left
        for sub in sorted((d for d in folder.rglob("*") if d.is_dir()), reverse=True):
            with contextlib.suppress(OSError):
                sub.rmdir()
    with contextlib.suppress(OSError):  # not empty: something of theirs is in it
        folder.rmdir()


def clear_run(path: str | os.PathLike[str]) -> None:
    """Remove everything a previous run wrote into ``path`` (``--overwrite``), and nothing
    else: files storyloom did not write stay where they are."""
    out = Path(path)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    (out / REPORT_NAME).unlink(missing_ok=True)
    for table in TABLES:
        remove_owned(out / table, table)
    remove_owned(out / WORK_DIR)
    remove_owned(out / STAGING_DIR)
    remove_owned(out / CORPUS_DIR)
    remove_old_tables(out)


def remove_old_tables(out: Path) -> None:
    """Table folders a killed publish left under a temporary name (``.clips.old-*``)."""
    for entry in out.iterdir():
        m = _OLD_TABLE.fullmatch(entry.name)
        if m and entry.is_dir() and not entry.is_symlink():
            remove_owned(entry, m.group(1))


# --- one run at a time ------------------------------------------------------------------------


def _holder_text(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another curate run"
    return (
        f"another curate run (pid {holder.get('pid')} on {holder.get('host')}, started "
        f"{holder.get('started')})"
    )


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data.decode("utf-8")) if data.strip() else None
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _running_here(holder: dict[str, Any]) -> bool:
    """Whether the holder may still be running: on another host it cannot be told."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder, held for the whole run (see the module docstring).

    ``with RunLock(out): ...`` raises :class:`OutputError` at once, naming the holder, when
    another run holds it.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OutputError(
                f"cannot create the lock file {self.path} ({exc.strerror or exc})",
                uri=str(self.folder),
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._refuse(fd, _read_holder(fd))
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            # no flock on this filesystem: the pid and host written in the file decide
            holder = _read_holder(fd)
            if holder and _running_here(holder):
                self._refuse(fd, holder, stale_hint=True)
        stale = _read_holder(fd)
        if stale:
            logger.warning(
                "%s: %s did not release its lock (it is no longer running); taking it over",
                self.folder,
                _holder_text(stale),
            )
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def _refuse(
        self, fd: int, holder: dict[str, Any] | None, *, stale_hint: bool = False
    ) -> NoReturn:
        os.close(fd)
        hint = (
            f"; if no run is active there, remove {self.path}"
            if stale_hint
            else "; wait for it to end, or write to another --output"
        )
        raise OutputError(
            f"{_holder_text(holder)} is writing this folder{hint}", uri=str(self.folder)
        )

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # released: nothing stale to report to the next run
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
