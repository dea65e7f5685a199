"""The MidoNet agents as Neutron's agent extension shows them, plus their membership.

Agents register themselves in the NSDB when they start; the API only reads them and lets an
admin set a description. Deactivating an agent is deleting its agent membership.
"""

from midonet_membership.api import validators

NAME = "agent"
ALIAS = "agent"
DESCRIPTION = ("The MidoNet agents: liveness, interfaces, whether each is a member and what "
               "each has built.")
UPDATED_TIMESTAMP = "2013-02-03T10:00:00-00:00"

RESOURCE_NAME = "agent"
COLLECTION_NAME = "agents"
PATHS = ("agents",)
OPERATIONS = ("list", "show", "update")
REFUSALS = {
    "create": "MidoNet agents register themselves when they start; they cannot be created "
              "through the API.",
    "delete": "A MidoNet agent cannot be deleted through the API: stop the agent, and delete "
              "its agent membership to remove it from the deployment.",
}

_READ_ONLY = {"allow_post": False, "allow_put": False, "is_visible": True}
RESOURCE_ATTRIBUTE_MAP = {
    COLLECTION_NAME: {
        "id": {**_READ_ONLY, "validate": {"type:uuid": None},
               "convert_to": validators.canonical_uuid, "primary_key": True,
               "is_filter": True, "is_sort_key": True},
        "agent_type": {**_READ_ONLY, "is_filter": True, "is_sort_key": True},
        "binary": {**_READ_ONLY, "is_filter": True, "is_sort_key": True},
        "topic": {**_READ_ONLY, "is_filter": True},
        "host": {**_READ_ONLY, "is_filter": True, "is_sort_key": True},
        "admin_state_up": {
            **_READ_ONLY, "convert_to": validators.convert_to_boolean,
            "put_refusal": "admin_state_up cannot be changed on a MidoNet agent; deactivate "
                           "it by deleting its agent membership"},
        "alive": {**_READ_ONLY, "convert_to": validators.convert_to_boolean,
                  "is_filter": True, "is_sort_key": True},
        "heartbeat_timestamp": {**_READ_ONLY, "is_sort_key": True},
        "description": {"allow_post": False, "allow_put": True, "is_visible": True,
                        "validate": {"type:string": 255}, "is_filter": True},
        "configurations": {**_READ_ONLY},
        "member": {**_READ_ONLY, "convert_to": validators.convert_to_boolean,
                   "is_filter": True, "is_sort_key": True},
        "tunnel_ip_address": {**_READ_ONLY, "is_filter": True, "is_sort_key": True},
        # What the agent reports it built, next to ``member`` (the admin's intent):
        # pending | active | unsupported | error, and why when not active.
        "state": {**_READ_ONLY, "is_filter": True, "is_sort_key": True},
        "state_reason": {**_READ_ONLY},
        "tunnels": {**_READ_ONLY, "is_sort_key": True},
        "peers": {**_READ_ONLY, "is_sort_key": True},
        "zone_position": {**_READ_ONLY, "is_sort_key": True},
        "admission_drops": {**_READ_ONLY, "is_sort_key": True},
        "vtep_mac": {**_READ_ONLY, "is_filter": True},
    },
}
