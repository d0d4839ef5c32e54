"""Labels: was an answer right, for its task? (judge on answerable questions, declining on unanswerable ones)."""

from __future__ import annotations

from collections.abc import Sequence

from gradguard.calibration.judge import get_judge
from gradguard.tasks import Task

__all__ = ["label_answer"]


def label_answer(task: Task, response: str, answers: Sequence[str], is_impossible: bool = False) -> bool:
    """True when ``response`` is a correct answer under ``task``.

    - A question marked ``is_impossible`` is answered correctly exactly when the response declines
      (``task.declines``; without a decline rule nothing declines, so it is always wrong).
    - An answerable question: a declined response is wrong; otherwise ``task.judge`` decides.
    """
    if is_impossible:
        return task.declined(response)
    if task.declined(response):
        return False
    return bool(get_judge(task.judge)(response, answers))
