"""The neutron-lib API definition of agent-membership, generated from our one declaration.

``midonet_membership.api.definitions.agent_membership`` is the resource as data; this module
translates it into the names neutron-lib expects, so the attribute map is not written twice:

- our validators are registered in neutron-lib's registry under ``type:midonet_<name>``
  (neutron-lib's own ``type:uuid`` accepts braces and missing dashes, and its
  ``type:ip_address`` accepts IPv6: the plugin must refuse what our server refuses);
- ``required`` becomes "no default" (neutron-lib's rule), and an optional attribute gets
  ``ATTR_NOT_SPECIFIED``; ``required_by_policy`` ones (tenant_id, project_id) have neither,
  because Neutron fills them from the request's project;
- a converter runs only on values its attribute's validator accepts: neutron-lib converts
  before it validates, so a converter's ValueError would otherwise be a bare 500.
"""

from __future__ import annotations

from typing import Any

from neutron_lib import constants
from neutron_lib.api import validators as lib_validators

from midonet_membership.api import validators
from midonet_membership.api.definitions import agent_membership as ours

NEUTRON_KEYS = frozenset({"allow_post", "allow_put", "validate", "convert_to", "default",
                          "is_visible", "required_by_policy", "primary_key", "is_filter",
                          "is_sort_key", "enforce_policy"})


def neutron_validator_name(name: str) -> str:
    """``type:uuid`` -> ``type:midonet_uuid``: ours beside neutron-lib's, never replacing."""
    return "type:midonet_" + name.removeprefix("type:")


def register_validators() -> None:
    for name, function in validators.VALIDATORS.items():
        if lib_validators.get_validator(neutron_validator_name(name)) is None:
            lib_validators.add_validator(neutron_validator_name(name), function)


def _converter_of(attribute: dict[str, Any]):
    convert, checks = attribute["convert_to"], attribute.get("validate", {})

    def convert_valid(value: Any) -> Any:
        for name, arg in checks.items():
            if validators.VALIDATORS[name](value, arg) is not None:
                return value  # left as it is: the validator reports it with its message
        return convert(value)
    convert_valid.__doc__ = convert.__doc__
    return convert_valid


def neutron_attribute(attribute: dict[str, Any]) -> dict[str, Any]:
    """One attribute of our declaration in neutron-lib's vocabulary."""
    result = {k: v for k, v in attribute.items() if k in NEUTRON_KEYS}
    if "validate" in attribute:
        result["validate"] = {neutron_validator_name(k): v
                              for k, v in attribute["validate"].items()}
    if "convert_to" in attribute:
        result["convert_to"] = _converter_of(attribute)
    if (attribute.get("allow_post") and not attribute.get("required")
            and not attribute.get("required_by_policy") and "default" not in attribute):
        result["default"] = constants.ATTR_NOT_SPECIFIED
    return result


register_validators()

NAME = ours.NAME
ALIAS = ours.ALIAS
DESCRIPTION = ours.DESCRIPTION
UPDATED_TIMESTAMP = ours.UPDATED_TIMESTAMP
RESOURCE_NAME = ours.RESOURCE_NAME
COLLECTION_NAME = ours.COLLECTION_NAME
# The URL segment: the spec's hyphenated name (Neutron also answers the underscore one).
COLLECTION_PATH = ours.PATHS[0]
API_PREFIX = ""
IS_SHIM_EXTENSION = False
IS_STANDARD_ATTR_EXTENSION = False
RESOURCE_ATTRIBUTE_MAP = {
    COLLECTION_NAME: {name: neutron_attribute(attribute) for name, attribute in
                      ours.RESOURCE_ATTRIBUTE_MAP[ours.COLLECTION_NAME].items()},
}
SUB_RESOURCE_ATTRIBUTE_MAP: dict = {}
ACTION_MAP: dict = {}
ACTION_STATUS: dict = {}
REQUIRED_EXTENSIONS: list[str] = []
OPTIONAL_EXTENSIONS: list[str] = []
