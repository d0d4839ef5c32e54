"""``/v1/score``: score given answers (teacher-forced) and return each one's gradguard metadata."""

from __future__ import annotations

import asyncio
from typing import Any

from gradguard.errors import InputError
from gradguard.integrations._core.metadata import METADATA_KEY
from gradguard.integrations._core.tool_turn import score_turn
from gradguard.result import ScoreResult
from gradguard.serving.engine import Engine
from gradguard.serving.errors import ApiError
from gradguard.serving.schema import ScoreRequest, chat_messages
from gradguard.serving.wire import RESULT_KEY, json_safe, result_to_wire

__all__ = ["score_request"]


def _score(
    engine: Engine, req: ScoreRequest, answers: list[str], task: str | None
) -> list[tuple[ScoreResult, dict[str, Any]]]:
    backend = engine.backend
    if req.tools:
        try:
            binding = backend.bind(req.tools, None)
        except InputError as exc:
            raise ApiError(400, str(exc), param="tools") from None
        messages = chat_messages(req.messages, tools=True)
        out = []
        for answer in answers:
            turn = score_turn(backend.scorer, messages, binding, answer, task=task)
            out.append((turn.result, turn.metadata()))
        return out
    results = backend.scorer.score_many(chat_messages(req.messages, tools=False), answers, task=task)
    return [(r, r.metadata()) for r in results]


async def score_request(engine: Engine, req: ScoreRequest, model_name: str, task: str | None) -> dict[str, Any]:
    """The ``gradguard.score`` object: ``{"object", "model", "results": [{"index", "gradguard", ...}]}``."""
    answers = req.answers(engine.settings.max_n * 4)
    with engine.admit():
        try:
            scored = await asyncio.wait_for(
                asyncio.to_thread(_score, engine, req, answers, task), engine.settings.request_timeout_s
            )
        except TimeoutError:
            raise ApiError(504, "scoring took longer than the server's request timeout", type="timeout_error",
                           code="request_timeout") from None
    results = []
    for i, (result, meta) in enumerate(scored):
        engine.metrics.observe_result(result, meta)
        item: dict[str, Any] = {"index": i, METADATA_KEY: json_safe(meta)}
        if req.want_result:
            item[RESULT_KEY] = result_to_wire(result)
        results.append(item)
    return {"object": "gradguard.score", "model": model_name, "results": results}
