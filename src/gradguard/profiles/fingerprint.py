"""A short, stable fingerprint of a tokenizer's chat template.

Two tokenizers with the same fingerprint render messages to the same text, so a
profile's offset (counted from the end of the templated prompt) means the same token.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["chat_template_fingerprint", "template_text"]


def template_text(tokenizer: Any) -> str | None:
    """The chat template as one string (named templates are joined in sorted order), or None if absent."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    if isinstance(template, str):
        return template
    if isinstance(template, dict):
        return json.dumps({str(k): str(v) for k, v in template.items()}, sort_keys=True)
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        return json.dumps(sorted(json.dumps(t, sort_keys=True) for t in template))
    return str(template)


def chat_template_fingerprint(tokenizer: Any) -> str | None:
    """``"sha256:<16 hex>"`` of the chat template with line endings normalised; None when there is no template."""
    text = template_text(tokenizer)
    if text is None:
        return None
    normalised = text.replace("\r\n", "\n").strip()
    return "sha256:" + hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:16]
