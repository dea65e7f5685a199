"""The agent-membership extension: an admin admits a MidoNet agent into the deployment.

A membership puts the agent's host (``id`` is its MidoNet host id) into the singleton
DEFAULT tunnel zone with ``ip_address`` as its tunnel endpoint. Only POST and DELETE change
it; there is nothing to update.

``tenant_id`` (and its newer name ``project_id``) is the original 2015 contract: accepted on
POST (``required_by_policy``), kept in the task's ``tenant_id`` column, never shown.
"""

from midonet_membership.api import validators

NAME = "Agent Membership"
ALIAS = "agent-membership"
DESCRIPTION = "Activate MidoNet agents by adding their hosts to the DEFAULT tunnel zone."
UPDATED_TIMESTAMP = "2015-07-21T10:00:00-00:00"

RESOURCE_NAME = "agent_membership"
COLLECTION_NAME = "agent_memberships"
PATHS = ("agent-memberships", "agent_memberships")
OPERATIONS = ("list", "show", "create", "delete")
ALLOW_BULK = True

# neutron_lib.db.constants.PROJECT_ID_FIELD_SIZE; the task's tenant_id column is as long.
PROJECT_ID_FIELD_SIZE = 255
_OWNER = {"allow_post": True, "allow_put": False, "required_by_policy": True,
          "validate": {"type:project_id": PROJECT_ID_FIELD_SIZE}, "is_visible": False}

RESOURCE_ATTRIBUTE_MAP = {
    COLLECTION_NAME: {
        "id": {
            "allow_post": True, "allow_put": False, "required": True,
            "validate": {"type:uuid": None}, "convert_to": validators.canonical_uuid,
            "is_visible": True, "primary_key": True, "is_filter": True, "is_sort_key": True,
        },
        "ip_address": {
            "allow_post": True, "allow_put": False, "required": True,
            "validate": {"type:ipv4_unicast": None},
            "is_visible": True, "is_filter": True, "is_sort_key": True,
        },
        "tenant_id": _OWNER,
        "project_id": _OWNER,
    },
}
