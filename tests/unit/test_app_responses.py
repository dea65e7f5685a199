"""What api/app.py answers when a response body cannot be encoded as JSON.

An error's message may echo what a client sent; text that is not valid Unicode (a lone
UTF-16 surrogate) in it made orjson fail after the app's own error handling, and the HTTP
server answered 500 for the app, which neither logged nor counted the request. The body
validation refuses such text first (tests/e2e/test_api_conformance.py); this is the net
under it.
"""

from __future__ import annotations

import json
import logging

import webob

from midonet_membership import exceptions
from midonet_membership.api.app import Application
from midonet_membership.context import RequestContext


def _app(answer) -> Application:
    def endpoint(req: webob.Request, context: RequestContext):
        return answer()
    return Application([], [], lambda req, request_id: RequestContext(request_id=request_id),
                       endpoints={"probe": endpoint})


def _call(app: Application, method: str = "GET") -> tuple[str, dict[str, str], bytes]:
    started = {}

    def start_response(status, headers):
        started.update(status=status, headers=dict(headers))
    body = b"".join(app(webob.Request.blank("/v2.0/probe", method=method).environ,
                        start_response))
    return started["status"], started["headers"], body


def _refuse():
    raise exceptions.BadRequest(resource="body", msg="'\ud800x' is not a valid UUID")


def test_an_error_echoing_a_lone_surrogate_keeps_its_status_with_the_text_escaped():
    status, headers, body = _call(_app(_refuse))
    assert status == "400 Bad Request"
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    error = json.loads(body.decode("utf-8"))["NeutronError"]  # strict UTF-8: it is
    assert error == {"type": "HTTPBadRequest", "detail": "",
                     "message": "Bad body request: '\\ud800x' is not a valid UUID."}


def test_its_head_has_the_same_length_and_no_body():
    _, got, body = _call(_app(_refuse))
    status, headers, nothing = _call(_app(_refuse), method="HEAD")
    assert status == "400 Bad Request" and nothing == b""
    assert headers["Content-Length"] == got["Content-Length"] == str(len(body))


def test_a_success_body_that_cannot_be_encoded_is_a_logged_500(caplog):
    with caplog.at_level(logging.ERROR, logger="midonet_membership.api.app"):
        status, headers, body = _call(_app(lambda: (200, {"probe": "\udfff"})))
    assert status == "500 Internal Server Error"
    error = json.loads(body)["NeutronError"]
    assert "could not complete the request" in error["message"]
    assert headers["x-openstack-request-id"] in error["message"]
    assert "could not be encoded" in caplog.text
