"""The node's TCP settings are written where they differ, and a missing knob is reported, not fatal."""

from __future__ import annotations

from nodeos.services.tcp_settings import TCP_SETTINGS, apply_tcp_settings


def fake_proc(tmp_path, values):
    for key, value in values.items():
        path = tmp_path / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")
    return tmp_path


def test_defaults_are_replaced_and_a_second_pass_changes_nothing(tmp_path):
    proc = fake_proc(tmp_path, {"net/ipv4/tcp_keepalive_time": 7200, "net/ipv4/tcp_keepalive_intvl": 75,
                                "net/ipv4/tcp_keepalive_probes": 9, "net/ipv4/tcp_retries2": 15})
    changed = apply_tcp_settings(proc)
    assert changed["net/ipv4/tcp_keepalive_time"] == ("7200", 10)
    assert changed["net/ipv4/tcp_retries2"] == ("15", 5)
    for key, value in TCP_SETTINGS.items():
        assert (proc / key).read_text().strip() == str(value)
    assert apply_tcp_settings(proc) == {}


def test_a_kernel_without_a_knob_still_gets_the_others(tmp_path):
    proc = fake_proc(tmp_path, {"net/ipv4/tcp_retries2": 15})
    assert apply_tcp_settings(proc) == {"net/ipv4/tcp_retries2": ("15", 5)}


def test_the_settings_bound_a_dead_peer_to_seconds():
    """Idle connection: time + intvl x probes; unacknowledged data: the RTO doubling from 200 ms."""
    idle = TCP_SETTINGS["net/ipv4/tcp_keepalive_time"] + TCP_SETTINGS["net/ipv4/tcp_keepalive_intvl"] * TCP_SETTINGS["net/ipv4/tcp_keepalive_probes"]
    in_flight = sum(0.2 * 2 ** k for k in range(TCP_SETTINGS["net/ipv4/tcp_retries2"] + 1))
    assert idle <= 30 and in_flight <= 15


def test_the_image_sets_the_same_values_at_boot():
    """The agent's unit protects /proc/sys on a real node: the image's sysctl.d file sets them, the agent checks."""
    from pathlib import Path

    conf = Path(__file__).resolve().parents[2] / "elements/nodeos-agent/static/etc/sysctl.d/60-nodeos-tcp.conf"
    lines = [line.split("=") for line in conf.read_text().splitlines() if line.strip() and not line.startswith("#")]
    booted = {key.strip().replace(".", "/"): int(value) for key, value in lines}
    assert booted == TCP_SETTINGS
