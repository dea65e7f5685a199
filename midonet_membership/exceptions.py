"""Domain errors, each with the HTTP status and the message a client sees.

Like neutron_lib.exceptions: the layer that detects a problem raises one of these, and the API
turns it into a NeutronError body without knowing where it came from.
"""

from __future__ import annotations


class MembershipError(Exception):
    """Base of the errors a client may see; ``code`` is the HTTP status."""

    code = 500
    message = "An unknown error occurred."
    #: The body's ``type`` where Neutron reports the error under webob's name (``HTTP...``);
    #: ``None``: the class name.
    webob_name: str | None = None

    def __init__(self, message: str | None = None, **kwargs: object) -> None:
        self.msg = message if message is not None else self.message % kwargs
        super().__init__(self.msg)

    @property
    def type(self) -> str:
        return self.webob_name or type(self).__name__


class BadRequest(MembershipError):
    code = 400
    message = "Bad %(resource)s request: %(msg)s."
    webob_name = "HTTPBadRequest"  # Neutron reports validation failures under webob's name


class InvalidInput(BadRequest):
    message = "Invalid input for operation: %(error_message)s."


class RequestEntityTooLarge(MembershipError):
    code = 413
    message = "Request body is larger than %(limit)d bytes."
    webob_name = "HTTPRequestEntityTooLarge"


class NotAuthenticated(MembershipError):
    code = 401
    message = "Authentication required."
    webob_name = "HTTPUnauthorized"


class ServiceUnavailable(MembershipError):
    code = 503
    message = "%(service)s is temporarily unavailable; retry later."
    webob_name = "HTTPServiceUnavailable"


class PolicyNotAuthorized(MembershipError):
    code = 403
    message = "(%(action)s) is disallowed by policy."


class NotFound(MembershipError):
    code = 404
    message = "An object was not found."


class ResourceNotFound(NotFound):
    message = "The resource could not be found."
    webob_name = "HTTPNotFound"


class AgentMembershipNotFound(NotFound):
    message = "Agent membership %(id)s could not be found."


class AgentNotFound(NotFound):
    message = "Agent %(id)s could not be found."


class ExtensionNotFound(NotFound):
    message = "Extension with alias %(alias)s does not exist."


class MethodNotAllowed(MembershipError):
    code = 405
    message = "%(method)s is not allowed on %(resource)s; allowed: %(allowed)s."
    webob_name = "HTTPMethodNotAllowed"


class Conflict(MembershipError):
    code = 409
    message = "A conflict occurred."


class AgentMembershipExists(Conflict):
    message = "Agent membership %(id)s already exists."


class TunnelIpAddressInUse(Conflict):
    message = ("IP address %(ip_address)s is already the tunnel endpoint of agent membership "
               "%(id)s; two hosts cannot share a tunnel endpoint.")
