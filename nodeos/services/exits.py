"""Know at once when a service's main process exits, at no cost while it lives.

The services pass used to find a dead process by looking, 10 times a second.
Now each local service's main process is held by a pidfd (Linux 5.3): a
thread sleeps in poll() on all of them and calls `on_exit` the moment one
becomes readable (its process ended), so the pass runs then instead of at
its next turn, and the pass itself can turn slowly while everything is well.
"""

from __future__ import annotations

import os
import select
import threading
from typing import Callable

from nodeos import log


class ExitWatch:
    def __init__(self, on_exit: Callable[[], None]) -> None:
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._watched: dict[str, tuple[int, int]] = {}  # service -> (pid, pidfd)
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # "the set changed": poll again
        self._stopped = False
        self._failed: set[str] = set()
        self._thread: threading.Thread | None = None  # started by the first process held

    def _start(self) -> None:
        """Lock held."""
        if self._thread is None and not self._stopped:
            self._thread = threading.Thread(target=self._loop, name="exit-watch", daemon=True)
            self._thread.start()

    def watch(self, name: str, pid: int | None) -> None:
        """Hold `name`'s main process `pid` (None: nothing to hold). Cheap when unchanged: every pass calls it."""
        with self._lock:
            current = self._watched.get(name)
            if current is not None and current[0] == pid:
                return
            if current is not None:
                del self._watched[name]
                os.close(current[1])
            if pid is not None and not self._stopped:
                try:
                    self._watched[name] = (pid, os.pidfd_open(pid))
                    self._start()
                except ProcessLookupError:
                    pid = None  # gone already: the pass that asks next sees it
                except OSError as exc:  # e.g. out of descriptors, or a seccomp filter: the timed passes still find it
                    if name not in self._failed:  # said once per service: every pass tries again
                        self._failed.add(name)
                        log.event("services.exit_watch_failed", level="warning", service=name, error=str(exc))
        if pid is None and current is None:
            return
        self._changed()

    def forget(self, name: str) -> None:
        self.watch(name, None)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            running = self._thread is not None
        if running:
            self._changed()  # the thread closes everything on its way out
        else:
            self._close_all()

    def _changed(self) -> None:
        try:
            os.write(self._write, b"x")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._stopped:
                    break
                poller = select.poll()  # rebuilt after each change: another thread never touches it
                poller.register(self._read, select.POLLIN)
                for _, fd in self._watched.values():
                    poller.register(fd, select.POLLIN)
            ready = {fd for fd, _ in poller.poll()}
            if self._read in ready:
                self._drain()
            exited = self._take_exited(ready - {self._read})
            if exited:
                self._on_exit()
        self._close_all()

    def _drain(self) -> None:
        try:
            while os.read(self._read, 512):
                pass
        except BlockingIOError:
            pass

    def _take_exited(self, fds: set[int]) -> list[str]:
        with self._lock:
            exited = [name for name, (_, fd) in self._watched.items() if fd in fds]
            for name in exited:
                os.close(self._watched.pop(name)[1])
        return exited

    def _close_all(self) -> None:
        with self._lock:
            for _, fd in self._watched.values():
                os.close(fd)
            self._watched.clear()
        os.close(self._read)
        os.close(self._write)
