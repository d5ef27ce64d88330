"""Dead members leave the Raft configuration (nodeos/cluster/membership.py): pure rules."""

from __future__ import annotations

from nodeos.cluster.membership import MemberView, member_to_remove, removal_refusal, replaced_member

REMOVE_AFTER = 600.0


def view(n: int, answering: bool = True, lost_for: float = 0.0, node_id: str | None = None) -> MemberView:
    return MemberView(f"10.0.0.{n}:7371", node_id or f"node{n}", answering, lost_for)


def test_a_member_lost_long_enough_is_removed_from_four():
    members = [view(1), view(2), view(3), view(4, answering=False, lost_for=601)]
    assert member_to_remove(members, REMOVE_AFTER) == members[3]


def test_not_before_member_remove_after():
    members = [view(1), view(2), view(3), view(4, answering=False, lost_for=599)]
    assert member_to_remove(members, REMOVE_AFTER) is None


def test_never_below_three_members():
    members = [view(1), view(2), view(3, answering=False, lost_for=10_000)]
    assert member_to_remove(members, REMOVE_AFTER) is None


def test_a_lost_record_that_answers_again_is_not_removed():
    """The leader hears it (its record not yet back to up): it is alive."""
    members = [view(1), view(2), view(3), view(4, answering=True, lost_for=700)]
    assert member_to_remove(members, REMOVE_AFTER) is None


def test_one_at_a_time_lost_longest_first_and_only_with_a_majority_left():
    members = [view(1), view(2), view(3), view(4, answering=False, lost_for=700), view(5, answering=False, lost_for=900)]
    assert member_to_remove(members, REMOVE_AFTER) == members[4]
    # 3 of 6 answering: removing a long-dead one leaves 3 of 5 answering, a majority.
    members = [view(1), view(2, answering=False, lost_for=5), view(3), view(4), view(5, answering=False, lost_for=900),
               view(6, answering=False, lost_for=800)]
    assert member_to_remove(members, REMOVE_AFTER) == members[4]
    # 2 of 5 answering: removing the dead one would leave 2 of 4, not a majority.
    members = [view(1), view(2), view(3, answering=False, lost_for=5), view(4, answering=False, lost_for=5),
               view(5, answering=False, lost_for=900)]
    assert member_to_remove(members, REMOVE_AFTER) is None


def test_a_join_from_a_new_id_at_a_silent_members_address_replaces_it():
    members = [view(1), view(2), view(3, answering=False, lost_for=30, node_id="old")]
    assert replaced_member(members, "10.0.0.3:7371", "new") == members[2]


def test_no_replacement_for_the_same_id_an_answering_member_or_an_unknown_address():
    members = [view(1), view(2), view(3, answering=False, node_id="old")]
    assert replaced_member(members, "10.0.0.3:7371", "old") is None  # the member itself, restarted
    assert replaced_member(members, "10.0.0.9:7371", "new") is None  # a new address: a plain join
    answering = [view(1), view(2), view(3, node_id="old")]
    assert replaced_member(answering, "10.0.0.3:7371", "new") is None  # two machines on one address: not ours to judge


def test_no_replacement_that_would_cost_the_quorum():
    members = [view(1), view(2, answering=False), view(3, answering=False, node_id="old")]
    assert replaced_member(members, "10.0.0.3:7371", "new") is None


def test_an_operator_removal_is_refused_with_the_reason():
    members = [view(1), view(2), view(3, answering=False, lost_for=20)]
    assert removal_refusal(members, members[2].addr) is None
    assert "up and answering" in removal_refusal(members, members[1].addr)
    assert "not a Raft member" in removal_refusal(members, "10.0.0.9:7371")
    assert "only member" in removal_refusal([view(1, answering=False)], "10.0.0.1:7371")
    two_dead = [view(1), view(2, answering=False), view(3, answering=False)]
    assert "1 of 2 members answering" in removal_refusal(two_dead, two_dead[2].addr)
