"""The scoring server's settings (:class:`ServerSettings`) and the bind-address safety check (framework-free)."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field

from gradguard.errors import GradguardError

__all__ = ["ServerSettings", "InsecureBindError", "check_bind", "is_loopback"]


class InsecureBindError(GradguardError):
    """The server was asked to listen beyond this machine without an API key."""


class ServerSettings(BaseModel):
    """How ``gradguard serve`` runs: the model, the address, the key, batching and the request limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(None, description="Hub id, folder or .gguf file; None = the embedded default.")
    device: str | None = Field(
        None, description="Where the model runs: 'cpu', 'cuda', 'cuda:N' or 'auto' (a GPU when torch sees one)."
    )
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    task: str | None = Field(None, description="Default calibration task (None: the profile's default).")
    api_key: str | None = Field(None, description="Bearer key every endpoint but /healthz requires (None: open).")
    max_batch: int = Field(8, ge=1, description="Most requests generated in one batch (1 = micro-batching off).")
    max_wait_ms: float = Field(10.0, ge=0, description="How long a batch waits for more requests to join.")
    max_queue: int = Field(64, ge=1, description="Most requests waiting for the model; more get 429.")
    request_timeout_s: float = Field(120.0, gt=0, description="A request running longer is cancelled (504).")
    max_body_bytes: int = Field(1 << 20, gt=0, description="Largest request body; larger ones get 413.")
    max_tokens_limit: int = Field(2048, ge=1, description="Largest max_tokens a request may ask for.")
    max_n: int = Field(8, ge=1, description="Most completions (n) per request.")
    insecure: bool = Field(False, description="Allow a non-loopback host without an API key.")
    served_model_name: str | None = Field(None, description="The model name clients use (default: the model's).")


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine (``localhost``, ``127.x``, ``::1``)."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(settings: ServerSettings) -> None:
    """Refuse (:class:`InsecureBindError`) a non-loopback host without an API key unless ``insecure`` is set."""
    if settings.api_key or settings.insecure or is_loopback(settings.host):
        return
    raise InsecureBindError(
        f"refusing to listen on {settings.host!r} without an API key: anyone who can reach it could use the model; "
        "pass --api-key KEY (or set GRADGUARD_API_KEY), or --insecure to serve it open anyway"
    )
