"""`nodeos ledger`: a volume smoke test an operator can use, and the image tier's witness.

An append-only ledger on a directory that is an RBD volume (the storage
catalog's `ledger` singleton mounts one there and moves it with the service):

* `POST /entries` appends the request body as one line and fsyncs it before
  answering 201: an acknowledged entry is on the volume;
* `GET /entries` returns every line;
* `GET /healthz` answers `ok` only while the directory is a mount point and
  writable: a ledger started on the root filesystem by mistake is unhealthy.
"""

from __future__ import annotations

import argparse
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_ENTRY = 4096
FILE = "ledger.txt"


class _Ledger(BaseHTTPRequestHandler):
    directory = "/var/lib/nodeos-ledger"
    lock = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet: the journal needs no access log
        pass

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/healthz":
            ok = os.path.ismount(self.directory) and os.access(self.directory, os.W_OK)
            self._reply(200 if ok else 503, b"ok\n" if ok else b"not on its volume\n")
        elif self.path == "/entries":
            try:
                with open(os.path.join(self.directory, FILE), "rb") as ledger:
                    self._reply(200, ledger.read())
            except FileNotFoundError:
                self._reply(200, b"")
        else:
            self._reply(404, b"GET /entries, POST /entries, GET /healthz\n")

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/entries":
            self._reply(404, b"POST /entries\n")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_ENTRY:
            self._reply(400, f"an entry is 1-{MAX_ENTRY} bytes\n".encode())
            return
        entry = self.rfile.read(length).replace(b"\n", b" ") + b"\n"
        with self.lock:
            fd = os.open(os.path.join(self.directory, FILE), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, entry)
                os.fsync(fd)
            finally:
                os.close(fd)
        self._reply(201, b"stored\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodeos.storage.ledger", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=_Ledger.directory, help="the volume's mount point (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8091, help="TCP port on every address (default: %(default)s)")
    args = parser.parse_args(argv)
    _Ledger.directory = args.dir
    ThreadingHTTPServer(("0.0.0.0", args.port), _Ledger).serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
