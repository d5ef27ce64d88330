"""The agent gives its node's network namespace the TCP settings of nodeos/services/tcp_settings.py; the host keeps its own."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nodeos.services.tcp_settings import TCP_SETTINGS

from .cluster_helpers import is_root, new_lab, teardown

pytestmark = [pytest.mark.lab, pytest.mark.skipif(not is_root(), reason="needs root for namespaces")]


def test_a_node_namespace_gets_the_tcp_settings_and_the_host_keeps_its_own():
    host_before = {key: (Path("/proc/sys") / key).read_text().strip() for key in TCP_SETTINGS}
    lab = new_lab(1, expect=1, catalog="lab")
    try:
        lab.wait_formed(timeout=60)
        for key, value in TCP_SETTINGS.items():
            read = subprocess.run([*lab.node_exec_argv("n1"), "cat", f"/proc/sys/{key}"], capture_output=True, text=True,
                                  timeout=10, check=True)
            assert read.stdout.strip() == str(value), key
    finally:
        teardown(lab)
    assert {key: (Path("/proc/sys") / key).read_text().strip() for key in TCP_SETTINGS} == host_before
