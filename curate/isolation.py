"""Run native decoding in a child process, so a crash costs one input, not the job.

Video decoders are C libraries; a corrupt file can make them segfault, abort, hang or allocate
without bound. In-process, any of those kills the Beam worker and, on a local runner, the whole
run. :class:`IsolatedWorker` keeps one long-lived child per worker that builds the step once
(models and decoders load once, not per video) and then serves calls over a pipe. The parent
waits with a deadline; a child that dies turns into an :class:`Outcome` naming the signal
("decoder crashed with signal 11 (SIGSEGV)"), a child that overruns the deadline is killed,
and either way a fresh child is started for the next input.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

#: lines of a traceback kept in failures rows
TRACEBACK_LINES = 12


@dataclass
class Outcome:
    """What happened to one isolated call: a value, an exception, or a dead child."""

    value: Any = None
    error: BaseException | None = None
    error_type: str | None = None
    message: str | None = None
    traceback: str | None = None
    crashed: bool = False
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.error_type is None


def traceback_tail(exc: BaseException | None = None, *, lines: int = TRACEBACK_LINES) -> str:
    """The last ``lines`` lines of the current (or ``exc``'s) traceback."""
    if exc is not None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    else:
        text = traceback.format_exc()
    return "\n".join(text.rstrip().splitlines()[-lines:])


def signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


def _portable(exc: BaseException) -> BaseException | None:
    """``exc`` if it survives pickling (domain errors do), else None: the type and message go."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return None
    return exc


def _child_main(conn: Any, factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    # the parent handles Ctrl-C; a child that dies of it mid-call would read as a crash
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        step = factory(**kwargs)
        if hasattr(step, "setup"):
            step.setup()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("setup-error", _portable(exc), type(exc).__name__, str(exc), traceback_tail()))
        return
    conn.send(("ready", None, None, None, None))
    while True:
        try:
            payload = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        if payload is None:
            break
        try:
            value = step(payload)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back as data
            conn.send(("error", _portable(exc), type(exc).__name__, str(exc), traceback_tail()))
            continue
        try:
            conn.send(("ok", value, None, None, None))
        except Exception as exc:  # an unpicklable result is the step's bug, report it
            conn.send(("error", None, type(exc).__name__, str(exc), traceback_tail()))
    if hasattr(step, "teardown"):
        step.teardown()


class IsolatedWorkerError(RuntimeError):
    """The isolated step could not even start (bad settings, missing model, ...)."""


def _child_entry(fd: int) -> None:
    """Entry point of the child process: read the step from the socket, then serve calls."""
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    try:
        factory, kwargs = conn.recv()
    except Exception as exc:  # noqa: BLE001 - e.g. the factory's module cannot be imported
        conn.send(("setup-error", None, type(exc).__name__, str(exc), traceback_tail()))
        return
    _child_main(conn, factory, kwargs)


class IsolatedWorker:
    """One child process serving ``factory(**kwargs)(payload)`` calls.

    The child is a fresh interpreter (``python -c``) talking over a socket pair: it imports
    only the step's own modules, not the parent's ``__main__`` (as ``multiprocessing``'s
    spawn would, which costs seconds when that is a Beam launcher), and nothing is forked
    from a process running Beam's gRPC threads. ``factory`` must be importable by name (a
    module-level class or function). ``timeout_s`` bounds each call; ``None`` waits for ever.
    """

    def __init__(
        self,
        factory: Callable[..., Callable[[Any], Any]],
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout_s: float | None = 300.0,
        name: str = "isolated",
        start_timeout_s: float = 300.0,
    ) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s!r}")
        if start_timeout_s <= 0:
            raise ValueError(f"start_timeout_s must be > 0, got {start_timeout_s!r}")
        self.factory = factory
        self.kwargs = dict(kwargs or {})
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.name = name
        self._proc: subprocess.Popen | None = None
        self._conn: Any = None
        self.restarts = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        # the child must import what the parent can (e.g. a test module defining the step)
        paths = [p for p in sys.path if isinstance(p, str)]
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in paths)
        fd = theirs.fileno()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"from curate.isolation import _child_entry; _child_entry({fd})",
            ],
            pass_fds=(fd,),
            env=env,
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        conn = Connection(ours.detach())
        self._proc, self._conn = proc, conn
        try:
            conn.send((self.factory, self.kwargs))
            if not conn.poll(self.start_timeout_s):
                raise EOFError("no answer")
            status, exc, etype, message, tb = conn.recv()
        except (EOFError, OSError):
            code = self._kill()
            raise IsolatedWorkerError(
                f"{self.name}: child process died while starting (exit code {code})"
            ) from None
        if status == "setup-error":
            self.close()
            raise IsolatedWorkerError(
                f"{self.name}: setup failed: {etype}: {message}\n{tb}"
            ) from exc
        logger.debug("%s: child %s ready", self.name, proc.pid)

    def _kill(self) -> int | None:
        proc, conn = self._proc, self._conn
        self._proc, self._conn = None, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
        with contextlib.suppress(OSError):
            conn.close()
        return code

    def close(self) -> None:
        proc, conn = self._proc, self._conn
        if proc is None:
            return
        with contextlib.suppress(OSError):
            conn.send(None)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        self._kill()

    def __enter__(self) -> IsolatedWorker:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._kill()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # --- calls ----------------------------------------------------------------------------------

    def call(self, payload: Any) -> Outcome:
        """Run one call in the child; never raises for what happens inside it."""
        self.start()
        conn = self._conn
        try:
            conn.send(payload)
            ready = conn.poll(self.timeout_s)
        except OSError:
            ready = True  # the child is gone; recv below reports how
        if not ready:
            self._kill()
            self.restarts += 1
            return Outcome(
                error_type="DecoderTimeout",
                message=f"no result after {self.timeout_s:g} s; the decoder process was killed",
                timed_out=True,
            )
        try:
            status, value, etype, message, tb = conn.recv()
        except (EOFError, OSError):
            code = self._kill()
            self.restarts += 1
            if code is not None and code < 0:
                how = f"crashed with signal {-code} ({signal_name(-code)})"
            else:
                how = f"exited with code {code}"
            return Outcome(
                error_type="DecoderCrash", message=f"decoder process {how}", crashed=True
            )
        if status == "ok":
            return Outcome(value=value)
        return Outcome(error=value, error_type=etype, message=message, traceback=tb)
