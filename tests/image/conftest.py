"""Fixtures of the image tests: one minimal image per session, a virtual LAN, VMs.

Everything a test creates is removed by finalizers, also on failure: QEMU
processes (by PID), tap devices, the bridge, dnsmasq and the HTTP server (by
PID), overlays. Serial console logs of every VM (and dnsmasq's log) are copied
to artifacts/image/<test>/ when a test fails.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import socketserver
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from nodeos.image.qemu import VM, mac_for, make_overlay, probe_accel

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "image"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """test_image_*.py build and boot images: marker `image` (`image_cloud`, the
    cloud image's tier, is only run when asked for). The other modules here
    (manifest validation, disk layout helpers, installer) are quick."""
    here = Path(__file__).parent
    for item in items:
        path = Path(str(item.fspath))
        if path.parent == here and path.name.startswith("test_image_") and not item.get_closest_marker("image_cloud"):
            item.add_marker(pytest.mark.image)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _failed(request: pytest.FixtureRequest) -> bool:
    node = request.node
    return any(getattr(getattr(node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("image tests need root (debootstrap, bridges, taps)")
    for tool in ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4", "sfdisk", "mksquashfs"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (run scripts/setup.sh)")


# ------------------------------------------------------------------ the image


@dataclass
class BuiltImage:
    output: Path
    info: dict[str, Any]
    seconds: float

    @property
    def raw(self) -> Path:
        return self.output / f"nodeos-{self.info['name']}.raw"

    @property
    def qcow2(self) -> Path:
        return self.output / f"nodeos-{self.info['name']}.qcow2"

    @property
    def pxe(self) -> Path:
        return self.output / "pxe"


# Three TCG guests on a 2-core host run 10-30x slower than hardware: with the
# shipped timings (1 s grant) the agents fence and re-elect all the time, and
# an agent at real-time priority that needs most of an emulated CPU starves
# the services it guards (the kernel logs "RT throttling activated"). So the
# image under TCG gets slow-machine timings, set the way an operator would for
# slow hardware (`nodeos image build --set`); under KVM it keeps the defaults.
TCG_CONFIG = (
    "realtime=false",
    "watchdog_timeout=30",
    "timing.raft_min_timeout=2.0",
    "timing.raft_max_timeout=3.2",  # + 2 x append_entries_period within fence_after
    "timing.append_entries_period=0.3",
    "timing.heartbeat_interval=0.5",
    "timing.lease=4.0",
    "timing.fence_after=4.0",
    "timing.fence_margin=2.0",
    "storage.command_timeout=180.0",  # a ceph CLI call takes tens of seconds on an emulated CPU
    # With the 2 s default the mons called elections over and over under TCG (status
    # snapshots with 0/3 in quorum) and every map change waited minutes: the volumes
    # pool's `osd pool create` never answered within 180 s (image_cloud, twice).
    "storage.mon_lease=10.0",
)


# Small VMs: Ceph's small-node settings (512 MiB per OSD, small PG counts). The storage tier
# (test_image_cloud) runs the packaged storage catalog (Ceph and its ledger), not the image's
# own cloud catalog (/etc/nodeos/catalog.yaml, the OpenStack control plane).
STORAGE_CONFIG = ("storage.tuning=lab", "catalog=storage")


def build_image(name: str, config_set: tuple[str, ...], output_name: str | None = None) -> BuiltImage:
    """Build images/<name>.yaml into images/build/<output_name or name>/ (DIB caches make rebuilds quick).

    NODEOS_IMAGE_TEST_REUSE=1 reuses an existing build whose recorded inputs
    (elements, manifest, nodeos sources, --set values) are unchanged, to
    iterate on tests; NODEOS_IMAGE_TEST_REUSE=any reuses it whatever changed
    since (only to iterate on the tests themselves).
    """
    need_root()
    from nodeos.image.build import BuildError, BuildOptions, build, sha256_file, tree_digest
    from nodeos.image.manifest import ELEMENTS_DIR, load_manifest

    output = REPO / "images" / "build" / (output_name or name)
    reuse = os.environ.get("NODEOS_IMAGE_TEST_REUSE")
    if reuse == "any" and (output / "manifest.json").exists():
        return BuiltImage(output, json.loads((output / "manifest.json").read_text()), 0.0)
    if reuse == "1" and (output / "manifest.json").exists():
        info = json.loads((output / "manifest.json").read_text())
        manifest = load_manifest(name)
        same = (info["inputs"]["manifest_sha256"] == sha256_file(manifest.path)
                and info["inputs"]["elements_sha256"] == tree_digest(
                    [ELEMENTS_DIR / e for e in manifest.elements], REPO)
                and info["inputs"]["nodeos_source_sha256"] == tree_digest(
                    [REPO / "nodeos", REPO / "pyproject.toml"], REPO)
                and info["inputs"].get("config_set") == list(config_set))
        if same:
            return BuiltImage(output, info, 0.0)
    start = time.monotonic()
    try:
        result = build(BuildOptions(manifest=name, output=output, config_set=config_set))
    except BuildError as exc:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        if (output / "build.log").exists():
            shutil.copy2(output / "build.log", ARTIFACTS / f"build-{name}.log")
        pytest.fail(f"building the {name} image failed: {exc}")
    return BuiltImage(output, result.info, time.monotonic() - start)


def slow_machine_config() -> tuple[str, ...]:
    return TCG_CONFIG if probe_accel() == "tcg" else ()


@pytest.fixture(scope="session")
def minimal_image() -> BuiltImage:
    """images/minimal.yaml, built once per session."""
    return build_image("minimal", slow_machine_config())


@pytest.fixture(scope="session")
def cloud_image() -> BuiltImage:
    """images/cloud.yaml (Ceph, OpenStack packages) running the storage catalog, built once per session."""
    return build_image("cloud", slow_machine_config() + STORAGE_CONFIG)


@pytest.fixture(scope="session")
def openstack_image() -> BuiltImage:
    """images/cloud.yaml as shipped (its own cloud catalog: the OpenStack control plane), with
    Ceph's small-node settings, built once per session into images/build/cloud-openstack/."""
    slow = slow_machine_config()
    # Under TCG a token takes seconds and a schema sync many minutes: the catalog's check
    # times and the jobs' time-outs stretched tenfold (service_time_scale).
    stretch = ("service_time_scale=10",) if slow else ()
    return build_image("cloud", slow + stretch + ("storage.tuning=lab",), output_name="cloud-openstack")


# ------------------------------------------------------------------ the LAN


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _HTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


NTP_EPOCH = 2208988800  # seconds from 1900 (NTP) to 1970 (Unix)


def _ntp_stamp(unix: float) -> bytes:
    seconds = int(unix) + NTP_EPOCH
    return struct.pack("!II", seconds, int((unix % 1) * 2**32) & 0xFFFFFFFF)


def sntp_reply(request: bytes, received: float, now: float) -> bytes | None:
    """A server's answer (RFC 4330) to a client's request, with this host's clock as stratum 1."""
    if len(request) < 48 or request[0] & 0x7 != 3:  # mode 3: client
        return None
    version = (request[0] >> 3) & 0x7
    header = struct.pack("!BBbbII4s", (version << 3) | 4, 1, request[2], -20, 0, 0, b"LOCL")
    return header + _ntp_stamp(now) + request[40:48] + _ntp_stamp(received) + _ntp_stamp(now)


class SntpServer:
    """The guests' time source on the test LAN (DHCP option 42): QEMU guests
    read the RTC in whole seconds and drift under TCG, and Ceph's mons report
    HEALTH_WARN (MON_CLOCK_SKEW) beyond 50 ms, as on a rack without NTP."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 123))
        self.sock.settimeout(0.5)
        self._stop = threading.Event()
        self.answered = 0
        self._thread = threading.Thread(target=self._serve, name="sntp", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                request, peer = self.sock.recvfrom(512)
            except OSError:
                continue
            reply = sntp_reply(request, time.time(), time.time())
            if reply is not None:
                self.sock.sendto(reply, peer)
                self.answered += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@dataclass
class Lan:
    """A Linux bridge with a host address, dnsmasq (DHCP, static lease per MAC,
    iPXE boot script) bound to it only, and an HTTP server for the PXE set."""

    name: str
    subnet: str  # "10.213.N"
    workdir: Path
    http_root: Path | None = None
    taps: list[str] = field(default_factory=list)
    dnsmasq: subprocess.Popen[bytes] | None = None
    httpd: _HTTPServer | None = None
    ntp: SntpServer | None = None

    @property
    def host_ip(self) -> str:
        return f"{self.subnet}.1"

    def vm_ip(self, index: int) -> str:
        return f"{self.subnet}.{10 + index}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host_ip}:8080"

    def up(self, vm_count: int, dhcp: bool = True) -> None:
        _ip("link", "add", self.name, "type", "bridge")
        Path(f"/sys/class/net/{self.name}/bridge/multicast_snooping").write_text("0\n")
        _ip("addr", "add", f"{self.host_ip}/24", "dev", self.name)
        _ip("link", "set", self.name, "up")
        if not dhcp:
            return
        self.ntp = SntpServer(self.host_ip)
        leases = self.workdir / "dnsmasq.leases"
        args = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", f"--interface={self.name}",
                "--bind-interfaces", "--except-interface=lo", "--port=0", "--no-resolv", "--no-hosts",
                f"--dhcp-range={self.subnet}.100,{self.subnet}.150,255.255.255.0,12h",
                "--dhcp-option=3", "--dhcp-option=6",  # no router, no DNS: nothing leaves the bridge
                f"--dhcp-option=42,{self.host_ip}",  # NTP: this host (SntpServer)
                f"--dhcp-leasefile={leases}", "--dhcp-authoritative", "--log-dhcp",
                f"--log-facility={self.workdir / 'dnsmasq.log'}", f"--pid-file={self.workdir / 'dnsmasq.pid'}",
                "--dhcp-userclass=set:ipxe,iPXE", f"--dhcp-boot=tag:ipxe,{self.http_url}/boot.ipxe"]
        for i in range(vm_count):
            args.append(f"--dhcp-host={mac_for(i)},{self.vm_ip(i)},vm{i}")
        self.dnsmasq = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(self.workdir / "dnsmasq.err", "wb"),
                                        start_new_session=True)
        time.sleep(0.5)
        if self.dnsmasq.poll() is not None:
            raise RuntimeError(f"dnsmasq failed: {(self.workdir / 'dnsmasq.err').read_text()}")
        if self.http_root is not None:
            root = str(self.http_root)

            def handler(*a: Any, **kw: Any) -> _QuietHandler:
                return _QuietHandler(*a, directory=root, **kw)

            self.httpd = _HTTPServer((self.host_ip, 8080), handler)
            threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def tap(self, index: int) -> str:
        name = f"{self.name}t{index}"
        _ip("tuntap", "add", "dev", name, "mode", "tap")
        self.taps.append(name)
        _ip("link", "set", name, "master", self.name)
        _ip("link", "set", name, "up")
        return name

    def down(self) -> None:
        if self.ntp is not None:
            self.ntp.stop()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
        if self.dnsmasq is not None and self.dnsmasq.poll() is None:
            self.dnsmasq.terminate()
            try:
                self.dnsmasq.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.dnsmasq.kill()
                self.dnsmasq.wait(timeout=10)
        for tap in self.taps:
            _ip("link", "del", tap, check=False)
        _ip("link", "del", self.name, check=False)


@pytest.fixture
def artifacts_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """Per-test work dir; copied to artifacts/image/<test>/ if the test fails."""
    work = tmp_path / "work"
    work.mkdir()
    yield work
    if _failed(request):
        dest = ARTIFACTS / request.node.name
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True, exist_ok=True)
        for path in work.iterdir():
            if path.is_file() and path.suffix in (".log", ".cmdline", ".json", ".leases", ".err", ".txt"):
                shutil.copy2(path, dest / path.name)
    # Disk overlays and firmware variables are large and useless afterwards.
    for path in work.iterdir():
        if path.suffix in (".qcow2", ".fd"):
            path.unlink(missing_ok=True)


def make_lan(workdir: Path, vm_count: int, http_root: Path | None = None, dhcp: bool = True) -> Lan:
    need_root()
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq not installed (run scripts/setup.sh)")
    n = 100 + os.getpid() % 100
    lan = Lan(name=f"nimg{os.getpid() % 10000}", subnet=f"10.213.{n}", workdir=workdir, http_root=http_root)
    try:
        lan.up(vm_count, dhcp=dhcp)
    except BaseException:
        lan.down()
        raise
    return lan


@pytest.fixture
def vms(artifacts_dir: Path) -> Iterator[list[VM]]:
    """A list the test appends its VMs to; every one is killed at the end."""
    started: list[VM] = []
    yield started
    for vm in started:
        vm.kill()


def formed(statuses: list[dict[str, Any] | None], size: int) -> bool:
    """Every node answered, all members of one group with one leader and `size` members."""
    if any(s is None for s in statuses):
        return False
    groups = {s.get("group_id") for s in statuses}  # type: ignore[union-attr]
    leaders = {s.get("leader") for s in statuses}  # type: ignore[union-attr]
    return (all(s.get("formation") == "member" for s in statuses)  # type: ignore[union-attr]
            and len(groups) == 1 and None not in groups
            and len(leaders) == 1 and None not in leaders
            and all(len(s.get("members") or []) == size for s in statuses))  # type: ignore[union-attr]


def dump_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))


def status(ip: str, port: int = 7372, timeout: float = 3.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/status", timeout=timeout) as resp:
            return json.loads(resp.read().decode())
    except (OSError, ValueError):
        return None


def http_post(url: str, body: bytes, timeout: float = 10.0) -> int | None:
    """The status code of a POST, or None when nothing answered."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def http_get(url: str, timeout: float = 3.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read().decode(errors="replace")
    except (OSError, ValueError):
        return None


__all__ = ["BuiltImage", "Lan", "VM", "dump_json", "formed", "make_lan", "make_overlay", "mac_for", "probe_accel",
           "status", "http_get"]
