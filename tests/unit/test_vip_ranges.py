"""VIP candidates and operator ranges (pure helpers of nodeos.services.vip)."""

from __future__ import annotations

import pytest

from nodeos.services.vip import VipRangeError, candidate_vips, parse_vip_range


def test_candidates_come_from_the_top_and_skip_broadcast() -> None:
    assert candidate_vips("10.0.0.0/24", set(), 3) == ["10.0.0.254", "10.0.0.253", "10.0.0.252"]


def test_candidates_skip_excluded_addresses() -> None:
    exclude = {"10.0.0.254", "10.0.0.252"}
    assert candidate_vips("10.0.0.0/24", exclude, 2) == ["10.0.0.253", "10.0.0.251"]


def test_candidates_accept_a_host_address_with_prefix() -> None:
    # A node's own "10.0.0.7/24" is what callers naturally have at hand.
    assert candidate_vips("10.0.0.7/24", {"10.0.0.7"}, 1) == ["10.0.0.254"]


def test_candidates_stop_at_the_network_address() -> None:
    assert candidate_vips("192.168.5.0/29", {"192.168.5.3"}, 10) == [
        "192.168.5.6", "192.168.5.5", "192.168.5.4", "192.168.5.2", "192.168.5.1",
    ]
    assert candidate_vips("10.0.0.0/24", set(), 0) == []


def test_candidates_on_point_to_point_nets() -> None:
    assert candidate_vips("10.0.0.0/31", set(), 5) == ["10.0.0.1", "10.0.0.0"]
    assert candidate_vips("10.0.0.9/32", set(), 5) == ["10.0.0.9"]


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "banana", "fe80::/64", ""])
def test_candidates_reject_bad_subnets(bad: str) -> None:
    with pytest.raises(VipRangeError):
        candidate_vips(bad, set(), 1)


def test_candidates_reject_negative_count() -> None:
    with pytest.raises(VipRangeError):
        candidate_vips("10.0.0.0/24", set(), -1)


def test_dash_range_is_inclusive() -> None:
    assert parse_vip_range("10.0.0.200-10.0.0.203") == ["10.0.0.200", "10.0.0.201", "10.0.0.202", "10.0.0.203"]
    assert parse_vip_range(" 10.0.0.9 - 10.0.0.9 ") == ["10.0.0.9"]


def test_cidr_range_gives_its_hosts() -> None:
    hosts = parse_vip_range("10.0.0.192/28")
    assert hosts[0] == "10.0.0.193" and hosts[-1] == "10.0.0.206" and len(hosts) == 14


def test_single_address() -> None:
    assert parse_vip_range("10.1.2.3") == ["10.1.2.3"]


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("10.0.0.220-10.0.0.200", "start is after end"),
        ("10.0.0.1-banana", "'banana' is not an IPv4 address"),
        ("10.0.0.193/28", "host bits set"),
        ("10.0.0.0/40", "not an IPv4 subnet"),
        ("", "empty"),
        ("10.0.0.0/8", "more than"),
        ("fe80::1", "not an IPv4 address"),
    ],
)
def test_bad_ranges_say_what_is_wrong(bad: str, words: str) -> None:
    with pytest.raises(VipRangeError) as info:
        parse_vip_range(bad)
    assert words in str(info.value)
    assert repr(bad.strip())[1:-1] in str(info.value) or bad == ""
