"""Named validators and converters, reused by name from resource declarations.

As in ``neutron_lib.api.validators``: a validator takes ``(value, arg)`` and returns None when
the value is fine, or a message saying what is wrong.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Callable
from typing import Any

Validator = Callable[[Any, Any], str | None]

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DOTTED_QUAD = re.compile(r"(0|[1-9][0-9]{0,2})(\.(0|[1-9][0-9]{0,2})){3}")


def validate_uuid(value: Any, _arg: Any = None) -> str | None:
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        return f"'{value}' is not a valid UUID"
    return None


def validate_string(value: Any, max_len: int | None = None) -> str | None:
    """Text a database column can keep, on every backend: PostgreSQL refuses NUL in text,
    and every driver refuses text that is not valid Unicode (a lone UTF-16 surrogate, which
    JSON's ``\\uXXXX`` escapes let through). Other control characters (a newline in a
    description) are kept, as neutron_lib's ``validate_string`` keeps them."""
    if not isinstance(value, str):
        return f"'{value}' is not a valid string"
    if not value.isascii() and not is_unicode_text(value):
        return "the text is not valid Unicode (it holds a lone UTF-16 surrogate)"
    if "\x00" in value:
        return f"{value[:32]!r} contains a NUL character, which text cannot hold"
    if max_len is not None and len(value) > max_len:
        return f"'{value[:32]}...' exceeds maximum length of {max_len}"
    return None


def validate_project_id(value: Any, max_len: int | None = None) -> str | None:
    """A project id as a database column can keep it (:func:`validate_string`), without
    control characters."""
    error = validate_string(value, max_len)
    if error is not None:
        return error
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in value):
        return f"{value!r} contains control characters"
    return None


def is_unicode_text(value: str) -> bool:
    """Whether ``value`` can be encoded as UTF-8: False for a lone surrogate."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_ipv4_unicast(value: Any, _arg: Any = None) -> str | None:
    """A unicast IPv4 address a tunnel can end on, in plain dotted-quad form."""
    if not isinstance(value, str):
        return f"'{value}' is not a valid IPv4 address"
    if ":" in value:
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            pass
        else:
            return f"'{value}' is an IPv6 address; only IPv4 is supported for tunneling"
    if not _DOTTED_QUAD.fullmatch(value):
        return (f"'{value}' is not a valid IPv4 address in dotted-quad form "
                "(four decimal numbers without leading zeros)")
    try:
        # The form is checked: four decimal numbers, each to go in one byte. Quicker than
        # ipaddress.IPv4Address (every POST, and every CREATE task the importer reads).
        address = int.from_bytes(bytes(int(octet) for octet in value.split(".")))
    except ValueError:  # a number over 255
        return f"'{value}' is not a valid IPv4 address"
    return _unusable_tunnel_endpoint(value, address)


_UNUSABLE = [
    (ipaddress.IPv4Network("0.0.0.0/8"), "is in 0.0.0.0/8 ('this network')"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "is a loopback address"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "is a multicast address"),
    (ipaddress.IPv4Network("255.255.255.255/32"), "is the broadcast address"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "is in the reserved range 240.0.0.0/4"),
]
# As integers: ``address in network`` builds objects on every call (every POST checks 5).
_UNUSABLE_RANGES = [(int(n.network_address), int(n.netmask), reason) for n, reason in _UNUSABLE]


def _unusable_tunnel_endpoint(text: str, address: int) -> str | None:
    for network, mask, reason in _UNUSABLE_RANGES:
        if address & mask == network:
            return f"'{text}' {reason}, not a unicast tunnel endpoint"
    return None


VALIDATORS: dict[str, Validator] = {
    "type:uuid": validate_uuid,
    "type:string": validate_string,
    "type:ipv4_unicast": validate_ipv4_unicast,
    "type:project_id": validate_project_id,
}


def convert_to_lower(value: str) -> str:
    return value.lower()


def canonical_uuid(value: str) -> str:
    """The lower-case canonical form stored for host ids (``str(uuid.UUID(...))``). Ids
    come in that form but for the case almost always, and building a ``uuid.UUID`` and
    formatting it again cost six times the match (every show, create and delete)."""
    if isinstance(value, str) and _UUID.fullmatch(value):
        return value.lower()
    return str(uuid.UUID(value))


# oslo_utils.strutils.bool_from_string(strict=True), which neutron_lib's converter uses
_TRUE = {"1", "t", "true", "on", "y", "yes"}
_FALSE = {"0", "f", "false", "off", "n", "no"}


def convert_to_boolean(value: Any) -> bool:
    """Neutron's boolean query/body converter; raises ValueError with the client's text."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"'{value}' cannot be converted to boolean")
