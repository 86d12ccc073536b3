"""`ApiError`: a refusal with its HTTP status, rendered as OpenAI's error JSON by `app.py`.

`{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`, the shape the `openai` client
parses into its exception classes (`BadRequestError`, `AuthenticationError`, `RateLimitError`, ...).
"""

from __future__ import annotations

from typing import Any

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
               500: "server_error", 503: "server_error", 504: "timeout_error"}


class ApiError(Exception):
    """An error answer: HTTP `status`, a message naming the problem, and the request field (`param`)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = ERROR_TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
