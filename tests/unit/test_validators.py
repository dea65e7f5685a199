"""The named validators and converters the resource declarations use (api/validators.py)."""

from __future__ import annotations

import uuid

import pytest

from midonet_membership.api import validators
from midonet_membership.api.definitions import agent, agent_membership

HOST = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


# -- type:uuid ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [HOST, HOST.upper(), "00000000-0000-0000-0000-000000000000",
                                   str(uuid.uuid1())])
def test_uuids_in_the_8_4_4_4_12_form_are_accepted(value):
    assert validators.validate_uuid(value) is None


@pytest.mark.parametrize("value", [
    "", "not-a-uuid", HOST[:-1], HOST + "0", HOST.replace("-", ""), "{" + HOST + "}",
    "urn:uuid:" + HOST, " " + HOST, HOST + " ", HOST + "\n", HOST.replace("3", "g", 1),
    HOST.replace("3", "\u0663", 1),  # ARABIC-INDIC DIGIT THREE is not a hex digit
    7, None, [HOST], {"id": HOST}, b"x", True,
])
def test_anything_else_is_not_a_uuid(value):
    error = validators.validate_uuid(value)
    assert error is not None and "is not a valid UUID" in error


@pytest.mark.parametrize("value", [HOST, HOST.upper()])
def test_every_accepted_uuid_converts_to_the_lower_case_canonical_form(value):
    assert validators.validate_uuid(value) is None
    assert validators.canonical_uuid(value) == HOST


# -- type:ipv4_unicast --------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "198.51.100.1", "10.0.0.1", "1.0.0.0", "192.0.2.255", "172.16.0.0", "100.64.0.1",
    "223.255.255.255", "1.2.3.4", "9.9.9.9",
])
def test_unicast_dotted_quads_are_accepted(value):
    assert validators.validate_ipv4_unicast(value) is None


@pytest.mark.parametrize("value, reason", [
    ("::1", "only IPv4 is supported"), ("2001:db8::1", "only IPv4 is supported"),
    ("::ffff:198.51.100.1", "only IPv4 is supported"), ("fe80::1%eth0", "only IPv4"),
    ("0.0.0.0", "0.0.0.0/8"), ("0.1.2.3", "0.0.0.0/8"),
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"),
    ("224.0.0.1", "multicast"), ("239.255.255.255", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.254", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("198.051.100.1", "without leading zeros"), ("010.0.0.1", "without leading zeros"),
    ("198.51.100.00", "without leading zeros"),
    ("1.2.3", "dotted-quad"), ("1.2.3.4.5", "dotted-quad"), ("a.b.c.d", "dotted-quad"),
    ("", "dotted-quad"), (" 1.2.3.4", "dotted-quad"), ("1.2.3.4 ", "dotted-quad"),
    ("1.2.3.4\n", "dotted-quad"), ("1.2.3.4/32", "dotted-quad"), ("0x01.2.3.4", "dotted-quad"),
    ("1.2.3.\u0664", "dotted-quad"),  # a non-ASCII digit
    ("1.2.3.256", "not a valid IPv4"), ("999.1.1.1", "not a valid IPv4"),
    ("fe80:zz::", "dotted-quad"),
    (7, "not a valid IPv4"), (None, "not a valid IPv4"), (3232235777, "not a valid IPv4"),
    (["198.51.100.1"], "not a valid IPv4"), ({"ip": "198.51.100.1"}, "not a valid IPv4"),
])
def test_other_values_are_refused_with_the_reason(value, reason):
    error = validators.validate_ipv4_unicast(value)
    assert error is not None and reason in error, error


# -- type:string, booleans -----------------------------------------------------------------------

def test_strings_and_their_maximum_length():
    assert validators.validate_string("abc") is None
    assert validators.validate_string("x" * 255, 255) is None
    assert "exceeds maximum length of 255" in validators.validate_string("x" * 256, 255)
    assert "is not a valid string" in validators.validate_string(5)
    for text in ("rack 4\tslot 2\nrow B", "\u00e9t\u00e9 \U0001f600", ""):  # as in Neutron
        assert validators.validate_string(text, 255) is None


@pytest.mark.parametrize("value, why", [
    ("\x00", "NUL"), ("rack 4\x00", "NUL"), ("\ud800", "not valid Unicode"),
    ("ok \udfff" + "x" * 300, "not valid Unicode"),
])
def test_strings_no_database_column_can_keep(value, why):
    # PostgreSQL refuses NUL in text; no driver (and no JSON encoder) takes a lone surrogate
    error = validators.validate_string(value, 255)
    assert why in error
    error.encode("utf-8")  # the message itself can be sent


def test_every_text_a_body_may_set_is_validated_for_what_a_database_can_keep():
    # api/resource.py looks for text that is not valid Unicode only in a body it refuses:
    # that is sound while every attribute a POST or PUT may set refuses such text.
    for definition in (agent, agent_membership):
        attributes = definition.RESOURCE_ATTRIBUTE_MAP[definition.COLLECTION_NAME]
        for name, attribute in attributes.items():
            if not (attribute.get("allow_post") or attribute.get("allow_put")):
                continue
            for bad in ("\ud800", "x\udfff", "\x00"):
                assert any(validators.VALIDATORS[v](bad, arg) is not None
                           for v, arg in attribute.get("validate", {}).items()), (name, bad)


@pytest.mark.parametrize("value, expected", [
    ("True", True), ("true", True), ("1", True), ("yes", True), (" on ", True), (True, True),
    ("t", True), ("Y", True), (1, True),
    ("False", False), ("false", False), ("0", False), ("no", False), ("OFF", False),
    ("f", False), ("N", False), (0, False), (False, False),
])
def test_booleans(value, expected):
    assert validators.convert_to_boolean(value) is expected


@pytest.mark.parametrize("value", ["maybe", "", "2", None, "tru", 2])
def test_not_booleans(value):
    with pytest.raises(ValueError, match="cannot be converted to boolean"):
        validators.convert_to_boolean(value)


# -- the declaration uses them --------------------------------------------------------------------

def test_the_membership_declaration_names_registered_validators():
    attributes = agent_membership.RESOURCE_ATTRIBUTE_MAP[agent_membership.COLLECTION_NAME]
    assert set(attributes) == {"id", "ip_address", "tenant_id", "project_id"}
    for attribute in attributes.values():
        assert attribute["allow_post"] and not attribute["allow_put"]
        for name in attribute["validate"]:
            assert name in validators.VALIDATORS
    assert attributes["id"]["validate"] == {"type:uuid": None}
    assert attributes["ip_address"]["validate"] == {"type:ipv4_unicast": None}
    assert attributes["id"]["required"] and attributes["ip_address"]["required"]
    for owner in ("tenant_id", "project_id"):  # the 2015 contract: posted, never shown
        assert attributes[owner]["required_by_policy"] and not attributes[owner]["is_visible"]


@pytest.mark.parametrize("value, ok", [
    ("tenant-a", True), ("0f" * 16, True), ("t" * 255, True), ("t" * 256, False),
    ("a\x00b", False), ("a\nb", False), ("\ud800", False), (7, False), (None, False),
])
def test_project_ids_a_database_column_can_keep(value, ok):
    assert (validators.validate_project_id(value, 255) is None) is ok
