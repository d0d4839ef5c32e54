"""Does a profile fit a model? Layer count, hidden size, ``model_type`` and the chat template."""

from __future__ import annotations

import warnings
from typing import Any

from gradguard.profiles.errors import ProfileMismatchError, ProfileWarning
from gradguard.profiles.schema import Profile

__all__ = ["check_compatible", "model_dims"]


def check_compatible(profile: Profile, model: Any, tokenizer: Any | None = None, *, strict: bool = True) -> None:
    """Raise :class:`ProfileMismatchError` when the profile was measured on a different model.

    Layer count, hidden size and ``model_type`` must match when the profile records
    them. A different chat-template fingerprint is an error with ``strict=True`` and a
    :class:`ProfileWarning` otherwise.
    """
    from gradguard.profiles.fingerprint import chat_template_fingerprint

    model_type, num_layers, hidden = model_dims(model)
    where = f" ({profile.source})" if profile.source else ""
    fix = "build one for this model with `gradguard profile build --model SRC --paraphrases FILE.jsonl`"
    if model_type is not None and profile.model_type != model_type:
        raise ProfileMismatchError(
            f"profile {profile.name!r}{where} is for model_type {profile.model_type!r} but the model is "
            f"{model_type!r}; {fix}"
        )
    if profile.num_layers is not None and num_layers is not None and profile.num_layers != num_layers:
        raise ProfileMismatchError(
            f"profile {profile.name!r}{where} was measured on {profile.num_layers} layers but the model has "
            f"{num_layers}; {fix}"
        )
    if profile.hidden_size is not None and hidden is not None and profile.hidden_size != hidden:
        raise ProfileMismatchError(
            f"profile {profile.name!r}{where} was measured with hidden size {profile.hidden_size} but the model has "
            f"{hidden}; {fix}"
        )
    if profile.layer_span is not None and num_layers is not None and profile.layer_span[1] > num_layers:
        raise ProfileMismatchError(
            f"profile {profile.name!r}{where} uses layers {profile.layer_span} but the model has {num_layers}; {fix}"
        )
    if tokenizer is not None and profile.chat_template_fingerprint is not None:
        fp = chat_template_fingerprint(tokenizer)
        if fp != profile.chat_template_fingerprint:
            msg = (
                f"profile {profile.name!r}{where} was measured with chat template {profile.chat_template_fingerprint} "
                f"but the tokenizer's template is {fp}; the offset {profile.spt_offset} may point at a different "
                f"token. Rebuild the profile ({fix.split('with ', 1)[1]}), or pass strict=False to use it anyway"
            )
            if strict:
                raise ProfileMismatchError(msg)
            warnings.warn(msg, ProfileWarning, stacklevel=2)


def model_dims(model: Any) -> tuple[str | None, int | None, int | None]:
    """``(model_type, num_layers, hidden_size)`` from a model's (text) config; None where unknown."""
    config = getattr(model, "config", model)
    if hasattr(config, "get_text_config"):
        try:
            config = config.get_text_config()
        except Exception:  # pragma: no cover - exotic configs
            pass
    model_type = getattr(getattr(model, "config", model), "model_type", None)
    layers = getattr(config, "num_hidden_layers", None)
    hidden = getattr(config, "hidden_size", None)
    return (
        str(model_type) if model_type is not None else None,
        int(layers) if layers is not None else None,
        int(hidden) if hidden is not None else None,
    )
