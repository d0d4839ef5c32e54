"""The server's errors and OpenAI's error object (framework-free)."""

from __future__ import annotations

from typing import Any

from gradguard.errors import GradguardError

__all__ = ["ApiError", "error_body", "loc_to_param"]


class ApiError(GradguardError):
    """An error the server answers with: an HTTP ``status`` and OpenAI's error object.

    ``type`` is OpenAI's error type (``invalid_request_error``, ``authentication_error``, ...), ``param`` the
    request field at fault (``messages[0].content``), ``code`` a short machine-readable code.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None  # noqa: A002
) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def loc_to_param(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """A pydantic error location as a request field name: ``("messages", 0, "role")`` -> ``messages[0].role``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("body",) and not out:
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or None
