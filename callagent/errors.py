"""callagent's errors: one tree, each class knowing its HTTP status and stable ``type``.

::

    CallagentError                      500 internal_error
    ├── InvalidRequest                  422 invalid_request
    │   └── MalformedJSON               400 malformed_json
    ├── RequestTimeout                  408 request_timeout        (the body did not arrive in time)
    ├── PayloadTooLarge                 413 payload_too_large
    │   └── VariablesLimit              413 variables_limit        (per-session variable caps)
    ├── UnsupportedEncoding             415 unsupported_encoding
    ├── Unauthorized                    401 unauthorized
    ├── Forbidden                       403 forbidden             (a Twilio signature that does not verify)
    ├── NotFound                        404 not_found
    │   └── SessionNotFound             404 session_not_found
    ├── MethodNotAllowed                405 method_not_allowed
    ├── StoreUnavailable                503 store_unavailable
    ├── SessionBusy                     409 session_busy
    ├── NotSupported                    501 not_supported          (the upstream cannot do this)
    └── UpstreamError                   502 upstream_error
        ├── UpstreamUnavailable         503 upstream_unavailable   (connect failed: nothing was sent)
        ├── UpstreamTimeout             504 upstream_timeout       (connect/first token/idle/turn deadline)
        ├── UpstreamAuth                502 upstream_auth          (key refused by the upstream)
        ├── UpstreamProtocol            502 upstream_protocol      (broken stream: EOF, bad frames, unvoiceable node)
        ├── UpstreamQuota               502 upstream_quota         (the upstream's account is out of credit)
        ├── UpstreamRejected            502 upstream_rejected      (the upstream refused the request as invalid)
        ├── UpstreamRateLimited         503 upstream_rate_limited  (the upstream asks to slow down)
        └── UpstreamBusy                503 upstream_busy          (the conversation is still running upstream)

Before a response has started, the error middleware turns any of them into
``{"code": "<status>", "msg": "...", "type": "..."}``. Once a stream has started they are
reported in-band (SSE ``error`` event, WebSocket ``error`` message).
"""

from __future__ import annotations


class CallagentError(Exception):
    status: int = 500
    type: str = "internal_error"

    def __init__(self, msg: str | None = None) -> None:
        self.msg = msg or self.__class__.default_msg()
        super().__init__(self.msg)

    @classmethod
    def default_msg(cls) -> str:
        return cls.type.replace("_", " ")

    def body(self) -> dict[str, str]:
        return {"code": str(self.status), "msg": self.msg, "type": self.type}


class InvalidRequest(CallagentError):
    status = 422
    type = "invalid_request"


class MalformedJSON(InvalidRequest):
    status = 400
    type = "malformed_json"


class PayloadTooLarge(CallagentError):
    status = 413
    type = "payload_too_large"


class VariablesLimit(PayloadTooLarge):
    type = "variables_limit"


class RequestTimeout(CallagentError):
    status = 408
    type = "request_timeout"


class UnsupportedEncoding(CallagentError):
    status = 415
    type = "unsupported_encoding"


class Unauthorized(CallagentError):
    status = 401
    type = "unauthorized"


class Forbidden(CallagentError):
    status = 403
    type = "forbidden"


class NotFound(CallagentError):
    status = 404
    type = "not_found"


class SessionNotFound(NotFound):
    type = "session_not_found"


class MethodNotAllowed(CallagentError):
    status = 405
    type = "method_not_allowed"


class StoreUnavailable(CallagentError):
    status = 503
    type = "store_unavailable"


class SessionBusy(CallagentError):
    status = 409
    type = "session_busy"


class NotSupported(CallagentError):
    status = 501
    type = "not_supported"


class UpstreamError(CallagentError):
    status = 502
    type = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    status = 503
    type = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "upstream_timeout"


class UpstreamAuth(UpstreamError):
    status = 502
    type = "upstream_auth"


class UpstreamProtocol(UpstreamError):
    status = 502
    type = "upstream_protocol"


class UpstreamQuota(UpstreamError):
    type = "upstream_quota"


class UpstreamRejected(UpstreamError):
    type = "upstream_rejected"


class UpstreamRateLimited(UpstreamError):
    status = 503
    type = "upstream_rate_limited"


class UpstreamBusy(UpstreamError):
    status = 503
    type = "upstream_busy"

