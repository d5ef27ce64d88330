"""The admin socket client (nodeos/storage/asok.py) against a socket speaking Ceph's protocol."""

from __future__ import annotations

import json
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest

from nodeos.storage import asok

# `ceph daemon mon.X ops` (Ceph 16), trimmed: a command forwarded to the leader, and beacons.
MON_OPS: dict[str, Any] = {"ops": [
    {"description": "mon_command({\"prefix\": \"osd pool create\", \"pool\": \"nodeos-volumes\"} v 0) v1", "age": 514.2,
     "type_data": {"events": [{"time": "t0", "event": "initiated"}, {"time": "t1", "event": "forward_request_leader"}],
                   "info": {"seq": 7, "src_is_mon": False, "forwarded_to_leader": True}}},
    {"description": "osd_beacon(pgs [1.0] lec 12 v12) v2", "age": 40.0, "type_data": {"events": []}},
    {"description": "osd_beacon(pgs [1.1] lec 12 v12) v2", "age": 31.5,
     "type_data": {"flag_point": "waiting for paxos", "events": [{"time": "t", "event": "psvc:dispatch"}]}},
], "num_ops": 3}


@pytest.fixture
def fake_socket(tmp_path: Path):
    """A one-request server: replies MON_OPS to `ops`, records what it was asked."""
    path = str(tmp_path / "ceph-mon.n1.asok")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    asked: list[dict[str, Any]] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while not data.endswith(b"\0"):
                data += conn.recv(4096)
            asked.append(json.loads(data[:-1]))
            body = json.dumps(MON_OPS).encode()
            conn.sendall(struct.pack(">I", len(body)) + body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, asked
    server.close()
    thread.join(timeout=5)


def test_slow_ops_are_counted_by_kind_and_the_oldest_say_where_they_wait(fake_socket):
    path, asked = fake_socket
    summary = asok.slow_ops(path, oldest=2)
    assert asked == [{"prefix": "ops"}]
    assert summary["count"] == 3
    assert summary["kinds"] == {"osd_beacon": 2, "mon_command": 1}
    first, second = summary["oldest"]
    assert first["age"] == 514.2 and "osd pool create" in first["description"]
    assert first["waiting"] == "forward_request_leader"
    assert second["age"] == 40.0 and second["waiting"] == ""


def test_an_absent_socket_is_an_admin_socket_error(tmp_path):
    with pytest.raises(asok.AdminSocketError):
        asok.slow_ops(str(tmp_path / "nothing.asok"))
