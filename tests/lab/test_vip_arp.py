"""VIPs and ARP on a real bridge: two nodes and a client, each in a namespace.

Invariant 2 (DESIGN.md): a VIP answers ARP from at most one node. The
client's raw-socket `who_has` collects EVERY answering MAC, so two holders
would be seen (checked below, to show the assertion can fail).
"""

from __future__ import annotations

import os
import socket
import threading
from typing import TYPE_CHECKING, Callable

import pytest

from nodeos.services import arp
from nodeos.services.vip import VipManager

if TYPE_CHECKING:
    from tests.lab.conftest import LabNode, LabTools

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root"),
]

VIP = "10.77.0.100"
FREE_IP = "10.77.0.200"


@pytest.fixture
def nodes(lab_node: Callable[[int], LabNode]) -> tuple[LabNode, LabNode, LabNode]:
    return lab_node(1), lab_node(2), lab_node(10)


@pytest.fixture
def managers(
    lab: type[LabTools], nodes: tuple[LabNode, LabNode, LabNode], request: pytest.FixtureRequest
) -> tuple[VipManager, VipManager]:
    node_a, node_b, _ = nodes
    manager_a, manager_b = VipManager(node_a.ifname), VipManager(node_b.ifname)

    def drop_vips() -> None:  # the namespaces go anyway; this checks remove_all works
        lab.in_netns(node_a.ns, manager_a.remove_all)
        lab.in_netns(node_b.ns, manager_b.remove_all)

    request.addfinalizer(drop_vips)
    return manager_a, manager_b


def who_has(lab: type[LabTools], client: LabNode, ip: str) -> set[str]:
    return lab.in_netns(client.ns, lambda: arp.who_has(client.ifname, ip, timeout=0.3))


def neighbour_mac(lab: type[LabTools], client: LabNode, ip: str) -> str | None:
    words = lab.ns_run(client.ns, "ip", "neigh", "show", ip, "dev", client.ifname).stdout.split()
    return words[words.index("lladdr") + 1].lower() if "lladdr" in words else None


def tcp_round_trip(lab: type[LabTools], server: LabNode, client: LabNode, ip: str) -> bytes:
    listener = lab.in_netns(server.ns, lambda: socket.create_server(("0.0.0.0", 9999)))
    with listener:
        listener.settimeout(5)
        conn_client = lab.in_netns(client.ns, lambda: socket.create_connection((ip, 9999), timeout=5))
        with conn_client:
            conn_server, _ = listener.accept()
            with conn_server:
                conn_server.sendall(b"hello from " + server.ns.encode())
                return conn_client.recv(100)


def test_vip_moves_between_nodes_with_arp(
    lab: type[LabTools], nodes: tuple[LabNode, LabNode, LabNode], managers: tuple[VipManager, VipManager]
) -> None:
    node_a, node_b, client = nodes
    manager_a, manager_b = managers
    assert who_has(lab, client, VIP) == set()

    # A holds the VIP: exactly A answers, and traffic reaches A.
    lab.in_netns(node_a.ns, lambda: manager_a.add(VIP, 24))
    lab.in_netns(node_a.ns, lambda: manager_a.add(VIP, 24))  # idempotent
    assert lab.in_netns(node_a.ns, manager_a.held) == {VIP}
    assert who_has(lab, client, VIP) == {node_a.mac}
    assert lab.ns_run(client.ns, "ping", "-c", "1", "-W", "2", VIP).returncode == 0
    assert tcp_round_trip(lab, node_a, client, VIP) == b"hello from " + node_a.ns.encode()
    assert neighbour_mac(lab, client, VIP) == node_a.mac

    # Move: remove on A, add on B. B's gratuitous ARP must update the
    # client's cached entry at once (no neighbour timeout, no new ping).
    lab.in_netns(node_a.ns, lambda: manager_a.remove(VIP))
    lab.in_netns(node_a.ns, lambda: manager_a.remove(VIP))  # idempotent
    assert lab.in_netns(node_a.ns, manager_a.held) == set()
    assert VIP not in lab.in_netns(node_a.ns, manager_a.present)
    lab.in_netns(node_b.ns, lambda: manager_b.add(VIP, 24))
    assert lab.wait_for(lambda: neighbour_mac(lab, client, VIP) == node_b.mac, timeout=1.0), (
        f"client neighbour entry is {neighbour_mac(lab, client, VIP)}, expected B {node_b.mac}"
    )
    assert who_has(lab, client, VIP) == {node_b.mac}
    assert tcp_round_trip(lab, node_b, client, VIP) == b"hello from " + node_b.ns.encode()

    lab.in_netns(node_b.ns, lambda: manager_b.remove(VIP))
    assert who_has(lab, client, VIP) == set()


def test_who_has_sees_a_duplicate_holder(
    lab: type[LabTools], nodes: tuple[LabNode, LabNode, LabNode], managers: tuple[VipManager, VipManager]
) -> None:
    """The 'at most one MAC' check is meaningful: two holders show up as two MACs."""
    node_a, node_b, client = nodes
    manager_a, manager_b = managers
    lab.in_netns(node_a.ns, lambda: manager_a.add(VIP, 32))
    lab.in_netns(node_b.ns, lambda: manager_b.add(VIP, 32))
    assert who_has(lab, client, VIP) == {node_a.mac, node_b.mac}


def test_probe_in_use(
    lab: type[LabTools], nodes: tuple[LabNode, LabNode, LabNode], managers: tuple[VipManager, VipManager]
) -> None:
    node_a, node_b, client = nodes
    manager_a, _ = managers
    probe = lambda node, ip: lab.in_netns(node.ns, lambda: arp.probe_in_use(node.ifname, ip))  # noqa: E731
    assert probe(node_b, VIP) is False
    lab.in_netns(node_a.ns, lambda: manager_a.add(VIP, 24))
    assert probe(node_b, VIP) is True
    assert probe(client, VIP) is True
    assert probe(node_b, FREE_IP) is False
    assert probe(node_b, node_a.ip) is True  # a node's own address counts too


def test_gratuitous_arp_is_seen_on_the_wire(lab: type[LabTools], nodes: tuple[LabNode, LabNode, LabNode]) -> None:
    """Both GARP forms go out with sender == target == VIP and A's MAC."""
    node_a, _, client = nodes
    garps: list[arp.ArpPacket] = []

    def listen() -> None:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(arp.ETH_P_ARP))
        with sock:
            sock.bind((client.ifname, arp.ETH_P_ARP))
            ready.set()
            sock.settimeout(5.0)
            while len(garps) < 4:
                try:
                    packet = arp.parse_arp(sock.recv(2048))
                except arp.ArpError:
                    continue
                except TimeoutError:
                    return
                if packet.sender_ip == packet.target_ip == VIP and packet.sender_mac == node_a.mac:
                    garps.append(packet)  # other ARP traffic on the link is ignored

    ready = threading.Event()
    listener = threading.Thread(target=lambda: lab.in_netns(client.ns, listen))
    listener.start()
    assert ready.wait(5)
    lab.in_netns(node_a.ns, lambda: arp.send_gratuitous(node_a.ifname, VIP, count=2, interval=0.01))
    listener.join(10)
    assert {p.op for p in garps} == {arp.ARP_REQUEST, arp.ARP_REPLY}
    assert len(garps) == 4
    assert all(p.eth_dst == arp.BROADCAST_MAC for p in garps)
    assert all(p.target_mac == node_a.mac for p in garps if p.op == arp.ARP_REPLY)


def test_an_address_removed_by_someone_else_is_seen_at_the_next_look(
    lab: type[LabTools], nodes: tuple[LabNode, LabNode, LabNode], managers: tuple[VipManager, VipManager]
) -> None:
    """The listing is reused for seconds, but not past a change the kernel reported (the guard's fence)."""
    node_a, _, _ = nodes
    manager_a, _ = managers
    lab.in_netns(node_a.ns, lambda: manager_a.add(VIP, 32, announce=False))
    assert VIP in lab.in_netns(node_a.ns, manager_a.present)
    assert VIP in lab.in_netns(node_a.ns, manager_a.present)  # from the listing
    lab.ns_run(node_a.ns, "ip", "addr", "del", f"{VIP}/32", "dev", node_a.ifname)
    assert VIP not in lab.in_netns(node_a.ns, manager_a.present)
    lab.ns_run(node_a.ns, "ip", "addr", "add", f"{VIP}/32", "dev", node_a.ifname)
    assert VIP in lab.in_netns(node_a.ns, manager_a.present)
