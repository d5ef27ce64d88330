"""`nodeos lab fault load`: a CPU hog per core plus heavy disk writes, for a while.

Runs inside a node's namespace as its own process group (so a node crash
ends it too); stops by itself after `--seconds`, and on SIGTERM, and removes
what it wrote. The writes go to the real disk (`--dir`, under /var/tmp),
in 16 MiB chunks with an fsync each, like a busy guest's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

CHUNK = 16 * 1024 * 1024
FILE_CHUNKS = 16  # 256 MiB per file, then it starts over


def run(seconds: float, cpus: int, directory: Path) -> int:
    stop_at = time.monotonic() + seconds
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    hogs = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(cpus)]
    directory.mkdir(parents=True, exist_ok=True)
    try:
        _write_until(stop_at, directory)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


def _write_until(stop_at: float, directory: Path) -> None:
    block = os.urandom(CHUNK)
    path = directory / "load.bin"
    while time.monotonic() < stop_at:
        with open(path, "wb") as handle:
            for _ in range(FILE_CHUNKS):
                if time.monotonic() >= stop_at:
                    break
                handle.write(block)
                handle.flush()
                os.fsync(handle.fileno())
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args(argv)
    return run(args.seconds, args.cpus, Path(args.dir))


if __name__ == "__main__":
    sys.exit(main())
