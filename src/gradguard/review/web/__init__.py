"""``gradguard review serve``: the reviewers' web app (FastAPI, server-rendered Jinja2 pages, HTML forms).

Needs ``pip install 'gradguard[review-web]'``. :func:`create_app` (in :mod:`gradguard.review.web.app`) is
imported on first use, so ``import gradguard.review.web.cli`` (the CLI's parser) does not import FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradguard.review.web.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from gradguard.extras import require

        require("fastapi", "review-web", "the review web app")
        require("jinja2", "review-web", "the review web app")
        from gradguard.review.web.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
