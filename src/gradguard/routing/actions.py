"""What a routing policy can do with an answer."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Action"]


class Action(StrEnum):
    """The action a policy tier takes on an answer.

    - ``ACCEPT``: return the answer as is.
    - ``ABSTAIN``: return the policy's ``abstain_text`` instead of the answer.
    - ``REJECT``: refuse the answer (integrations raise or mark it); the outcome's
      ``answer`` holds ``abstain_text``, never the unguarded answer.
    - ``ESCALATE``: hand the question to a named escalation target (a bigger
      model, a retrieval step, a human review queue) and decide again on what
      comes back.
    """

    ACCEPT = "accept"
    ABSTAIN = "abstain"
    REJECT = "reject"
    ESCALATE = "escalate"

    def __str__(self) -> str:
        return self.value
