"""Neutral observers for the fencing tests: one ARP sampler per VIP, a process census.

Neither asks an agent: the samplers send ARP requests from the lab's client
namespace every 20 ms and record every MAC that answers each one; the census
reads every node's processes. A test then checks the recorded history.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from nodeos.lab.lab import Lab
from nodeos.lab.services import census

from .cluster_helpers import CLIENT_SCRIPT

ARP_PERIOD = 0.02


class ArpSamplers:
    """One raw-socket ARP sampler process per VIP, in the client namespace."""

    def __init__(self, lab: Lab, vips: list[str]) -> None:
        ns = lab.add_client()
        self._stop = Path(tempfile.mkdtemp(prefix="nodeos-arp-")) / "stop"
        self._procs = [subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT_SCRIPT, "sample_arp", vip,
                                         str(self._stop), str(ARP_PERIOD)], stdout=subprocess.PIPE, text=True,
                                        start_new_session=True) for vip in vips]
        self.windows: list[dict[str, Any]] = []

    def stop(self) -> list[dict[str, Any]]:
        self._stop.touch()
        for proc in self._procs:
            try:
                out, _ = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            self.windows += [json.loads(line) for line in out.splitlines() if line.strip()]
        self._stop.unlink(missing_ok=True)
        os.rmdir(self._stop.parent)
        return self.windows

    def doubles(self) -> list[dict[str, Any]]:
        return [w for w in self.windows if len(w["macs"]) > 1]

    def gap_before(self, t: float) -> float | None:
        """Seconds since the previous window of the same VIP (a stalled sampler shows here)."""
        window = next((w for w in self.windows if w["t"] == t), None)
        earlier = [w["t"] for w in self.windows if window and w["vip"] == window["vip"] and w["t"] < t]
        return round(t - max(earlier), 3) if earlier else None


def _mac(ns: str) -> str:
    out = subprocess.run(["ip", "-j", "-n", ns, "link", "show", "dev", "eth0"], capture_output=True, text=True)
    return (json.loads(out.stdout or "[{}]")[0]).get("address", "?")


def vips_on_nodes(lab: Lab, vips: set[str]) -> dict[str, list[str]]:
    """Which nodes have each VIP on their interface (seen by `ip`, not by any agent)."""
    found: dict[str, list[str]] = {}
    for name, node in sorted(lab.spec.nodes.items()):
        result = subprocess.run(["ip", "-j", "-n", node.ns, "-4", "addr", "show", "dev", "eth0"], capture_output=True, text=True)
        for entry in json.loads(result.stdout or "[]"):
            if "LOWER_UP" not in entry.get("flags", []):
                continue  # a crashed or unplugged node keeps its addresses but answers nobody
            for addr in entry.get("addr_info", []):
                if addr["local"] in vips:
                    found.setdefault(addr["local"], []).append(name)
    return found


class Census:
    """Samples which nodes run each service (and hold each VIP), every `period`, in a thread."""

    def __init__(self, lab: Lab, period: float = 0.05, vips: set[str] | None = None) -> None:
        self.lab, self.period, self.vips = lab, period, vips or set()
        self.samples: list[tuple[float, dict[str, list[str]]]] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._halt.is_set():
            seen = census(self.lab)
            if self.vips:
                seen.update(vips_on_nodes(self.lab, self.vips))
            self.samples.append((time.monotonic(), seen))
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(timeout=10)

    def doubles(self, services: list[str]) -> list[tuple[float, str, list[str]]]:
        return [(t, s, seen[s]) for t, seen in self.samples for s in services if len(seen.get(s, [])) > 1]


class Observers:
    """ARP samplers for the given VIPs plus a census, started together."""

    def __init__(self, lab: Lab, vips: dict[str, str], addresses: bool = False) -> None:
        self.vips = vips
        self.macs = {name: _mac(node.ns) for name, node in lab.spec.nodes.items()}
        self.arp = ArpSamplers(lab, sorted(vips.values()))
        # `addresses`: also sample every node's addresses (a cut-off node is out of the ARP samplers' reach).
        self.census = Census(lab, vips=set(vips.values()) if addresses else None)

    def stop(self) -> None:
        self.census.stop()
        self.arp.stop()

    def _addresses_near(self, t: float) -> list[tuple[float, dict[str, list[str]]]]:
        return [(round(at - t, 2), {k: v for k, v in seen.items() if k in self.census.vips})
                for at, seen in self.census.samples if abs(at - t) < 0.5]

    def assert_never_two(self) -> None:
        doubles = self.arp.doubles()
        assert not doubles, (f"two MACs answered for a VIP in {len(doubles)} windows, first {doubles[:3]}; "
                             f"sampler gap before it: {self.arp.gap_before(doubles[0]['t']) if doubles else None}s; "
                             f"MACs: {self.macs}; VIP addresses sampled around it: "
                             f"{self._addresses_near(doubles[0]['t']) if doubles else None}")
        twice = self.census.doubles(sorted(self.vips) + sorted(self.census.vips))
        assert not twice, f"a singleton ran on two nodes in {len(twice)} samples, first {twice[:3]}"
        assert self.arp.windows and self.census.samples, "the observers recorded nothing"


class VolumeMounts:
    """Samples, every `period`, which nodes have a service's volume mounted read-write.

    Read from the kernel's mount table (lab agents mount in the host's mount
    namespace), never from an agent: a mount point `<state_dir>/services/NAME/data`
    belongs to that node.
    """

    def __init__(self, lab: Lab, service: str, period: float = 0.05) -> None:
        self.points = {str(Path(node.state_dir) / "services" / service / "data"): name
                       for name, node in lab.spec.nodes.items()}
        self.period = period
        self.samples: list[tuple[float, list[str]]] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._halt.is_set():
            nodes = []
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                fields = line.split()
                if fields[4] in self.points and "rw" in fields[5].split(","):
                    nodes.append(self.points[fields[4]])
            self.samples.append((time.monotonic(), sorted(nodes)))
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(timeout=10)

    def doubles(self) -> list[tuple[float, list[str]]]:
        return [(t, nodes) for t, nodes in self.samples if len(nodes) > 1]
