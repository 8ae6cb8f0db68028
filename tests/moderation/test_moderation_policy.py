"""Policies: validation, defaults per conversation type, and merging of overrides."""

from __future__ import annotations

import dataclasses

import pytest

from moderation import DEFAULT_POLICIES, Policy, parse_policy_overrides, policy_for


def test_default_direct_and_group_conversations_mask_every_label() -> None:
    for conv_type in ("direct", "group"):
        assert DEFAULT_POLICIES[conv_type].as_dict() == {
            "profanity": "mask",
            "phone": "mask",
            "email": "mask",
            "url": "mask",
        }


def test_default_support_conversations_allow_contact_details_but_mask_profanity() -> None:
    assert DEFAULT_POLICIES["support"].as_dict() == {
        "profanity": "mask",
        "phone": "allow",
        "email": "allow",
        "url": "allow",
    }


def test_unknown_conversation_type_gets_the_direct_policy() -> None:
    assert policy_for("marketplace-auction") == DEFAULT_POLICIES["direct"]


def test_overrides_replace_only_the_labels_they_name() -> None:
    policy = policy_for("group", {"group": {"url": "allow", "phone": "hold"}})
    assert policy.as_dict() == {
        "profanity": "mask",
        "phone": "hold",
        "email": "mask",
        "url": "allow",
    }


def test_overrides_for_another_type_leave_this_one_alone() -> None:
    assert policy_for("direct", {"support": {"email": "hold"}}) == DEFAULT_POLICIES["direct"]


def test_overrides_naming_an_unknown_conversation_type_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown conversation type 'dm'"):
        policy_for("direct", {"dm": {"url": "allow"}})


def test_from_mapping_refuses_an_unknown_label_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match=r"unknown moderation label 'links'.*profanity, phone"):
        Policy.from_mapping({"links": "mask"})


def test_from_mapping_refuses_an_unknown_action_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="unknown moderation action 'block' for 'url'"):
        Policy.from_mapping({"url": "block"})


def test_from_mapping_without_a_base_allows_the_labels_it_does_not_name() -> None:
    assert Policy.from_mapping({"phone": "reject"}).as_dict() == {
        "profanity": "allow",
        "phone": "reject",
        "email": "allow",
        "url": "allow",
    }


def test_a_policy_cannot_be_built_or_changed_with_an_invalid_action() -> None:
    with pytest.raises(ValueError):
        Policy(phone="delete")  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_POLICIES["direct"].phone = "allow"  # type: ignore[misc]


def test_env_style_json_overrides_parse_and_validate() -> None:
    raw = '{"support": {"email": "hold", "url": "reject"}}'
    overrides = parse_policy_overrides(raw)
    assert policy_for("support", overrides).as_dict() == {
        "profanity": "mask",
        "phone": "allow",
        "email": "hold",
        "url": "reject",
    }
    assert parse_policy_overrides("  ") == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["group"]', "must look like"),
        ('{"group": {"url": "nope"}}', "unknown moderation action 'nope'"),
        ('{"chat": {"url": "allow"}}', "unknown conversation type 'chat'"),
    ],
)
def test_malformed_env_overrides_fail_with_a_readable_message(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_policy_overrides(raw)
