"""The agent-membership extension descriptor: its alias, and the routes to the plugin.

An ``APIExtensionDescriptor`` alone lists the alias in ``/v2.0/extensions`` and routes
nothing (checked on neutron 29); ``get_resources`` builds the controller.
"""

from neutron.api import extensions
from neutron.api.v2 import base
from neutron_lib.api import extensions as api_extensions
from neutron_lib.plugins import directory

from midonet_membership.neutron import definition
from midonet_membership.neutron.plugin import PLUGIN_TYPE


class Agent_membership(api_extensions.APIExtensionDescriptor):  # noqa: N801 (Neutron's rule)
    """Activate MidoNet agents by adding their hosts to the DEFAULT tunnel zone."""

    api_definition = definition

    @classmethod
    def get_resources(cls) -> list[extensions.ResourceExtension]:
        plugin = directory.get_plugin(PLUGIN_TYPE)
        attributes = definition.RESOURCE_ATTRIBUTE_MAP[definition.COLLECTION_NAME]
        controller = base.create_resource(
            definition.COLLECTION_NAME, definition.RESOURCE_NAME, plugin, attributes,
            allow_bulk=True, allow_pagination=True, allow_sorting=True)
        return [extensions.ResourceExtension(definition.COLLECTION_PATH, controller,
                                             attr_map=attributes)]
