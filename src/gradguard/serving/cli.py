"""``gradguard serve``: run the OpenAI-compatible scoring server (uvicorn; or Ray Serve with ``--ray``)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from gradguard.errors import GradguardError
from gradguard.serving.settings import ServerSettings, check_bind

__all__ = ["register", "settings_from_args", "serve"]


def register(sub: Any) -> None:
    """Add ``serve`` to the ``gradguard`` command line."""
    p = sub.add_parser("serve", help="run the OpenAI-compatible server whose answers carry their gradient scores")
    p.add_argument("--model", default=None, help="Hub id, local folder or .gguf file (default: the embedded model)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (a GPU when torch sees one); default cpu")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--task", default=None, help="default calibration task (default: the profile's)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: $GRADGUARD_API_KEY)")
    p.add_argument("--served-model-name", default=None, help="the model name clients use (default: the model's)")
    p.add_argument("--max-batch", type=int, default=8, help="most requests per generation batch (1 = off)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a batch waits for more requests")
    p.add_argument("--max-queue", type=int, default=64, help="most waiting requests; more get 429")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds before a request is cancelled (504)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (413 beyond)")
    p.add_argument("--max-tokens-limit", type=int, default=2048, help="largest max_tokens a request may ask for")
    p.add_argument("--max-n", type=int, default=8, help="most completions per request")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without an API key")
    p.add_argument("--ray", action="store_true", help="serve with Ray Serve (pip install 'gradguard[ray]')")
    p.add_argument("--replicas", type=int, default=2, help="Ray Serve replicas, one model each (with --ray)")
    p.add_argument("--num-cpus-per-replica", type=float, default=1.0, help="CPUs Ray reserves per replica (fractional)")
    p.add_argument("--num-gpus-per-replica", type=float, default=0.0, help="GPUs Ray reserves per replica (fractional)")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster ('auto', or ray://HOST:10001)")
    p.add_argument("--max-ongoing-requests", type=int, default=None,
                   help="requests Ray sends one replica at a time (default: 2 x --max-batch)")
    p.add_argument("--max-queued-requests", type=int, default=None,
                   help="requests Ray's proxy holds before answering 429 (default: --max-queue)")
    p.set_defaults(func=_cmd_serve)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The :class:`ServerSettings` of the parsed ``serve`` arguments (the key from ``$GRADGUARD_API_KEY`` when
    ``--api-key`` is not given)."""
    return ServerSettings(
        model=args.model, device=args.device, host=args.host, port=args.port, task=args.task,
        api_key=args.api_key or os.environ.get("GRADGUARD_API_KEY") or None,
        served_model_name=args.served_model_name, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue, request_timeout_s=args.request_timeout, max_body_bytes=args.max_body_bytes,
        max_tokens_limit=args.max_tokens_limit, max_n=args.max_n, insecure=args.insecure,
    )


def serve(settings: ServerSettings) -> None:
    """Run the server in this process until it is stopped (needs ``gradguard[serve]``)."""
    from gradguard.extras import require

    require("fastapi", "serve", "the scoring server")
    uvicorn = require("uvicorn", "serve", "the scoring server")
    check_bind(settings)
    from gradguard.serving.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port)


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    check_bind(settings)
    if args.ray:
        from gradguard.serving.ray import serve_with_ray

        if args.replicas < 1:
            raise GradguardError(f"--replicas {args.replicas}: run at least one replica")
        serve_with_ray(
            settings, replicas=args.replicas, num_cpus=args.num_cpus_per_replica, num_gpus=args.num_gpus_per_replica,
            address=args.ray_address, max_ongoing_requests=args.max_ongoing_requests,
            max_queued_requests=args.max_queued_requests,
        )
        return 0
    serve(settings)
    return 0


if __name__ == "__main__":
    import sys

    from gradguard.cli import standalone

    sys.exit(standalone(register))
