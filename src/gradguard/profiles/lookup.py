"""Which profile applies to a model: explicit → model id → chat-template fingerprint → family default.

Resolution order (:func:`resolve_profile`):

1. an explicit profile (a :class:`Profile`, a JSON path, or a built-in name);
2. a measured profile whose ``model_id`` equals the model id (case-insensitive);
3. a measured profile with the same chat-template fingerprint, ``model_type``, layer
   count and hidden size (the same model under another name, e.g. a local folder);
4. the family default for the model's ``model_type`` (the paper's offsets:
   Llama-3.x −4, Qwen2/2.5/3 −3, Mistral −2), if the chat template has the family's marker;
5. otherwise :class:`ProfileNotFoundError`, whose message gives the
   ``gradguard profile build`` command.

Measured profiles are searched in the folders of ``$GRADGUARD_PROFILE_PATH``
(``os.pathsep``-separated) first, then among the built-in profiles shipped in
``gradguard/profiles/builtin/``.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from gradguard.profiles.compat import check_compatible, model_dims
from gradguard.profiles.errors import ProfileError, ProfileNotFoundError, ProfileWarning
from gradguard.profiles.fingerprint import chat_template_fingerprint, template_text
from gradguard.profiles.io import load_profile, profile_from_dict
from gradguard.profiles.schema import Profile

__all__ = [
    "FAMILY_DEFAULTS",
    "PROFILE_PATH_ENV",
    "builtin_profiles",
    "builtin_profile_names",
    "load_builtin_profile",
    "user_profiles",
    "resolve_profile",
    "manual_profile",
    "token_at_offset",
]

#: ``model_type`` → name of the built-in family-default profile.
FAMILY_DEFAULTS: dict[str, str] = {
    "llama": "family:llama3",
    "qwen2": "family:qwen2",
    "qwen2_moe": "family:qwen2",
    "qwen3": "family:qwen3",
    "qwen3_moe": "family:qwen3",
    "mistral": "family:mistral",
}

#: Environment variable naming extra folders of profile JSON files (searched before the built-ins).
PROFILE_PATH_ENV = "GRADGUARD_PROFILE_PATH"

_PROBE_MESSAGES = [{"role": "user", "content": "What is the boiling point of water at sea level?"}]


@functools.lru_cache(maxsize=1)
def builtin_profiles() -> Mapping[str, Profile]:
    """The profiles shipped with gradguard, keyed by their ``name``."""
    out: dict[str, Profile] = {}
    folder = resources.files("gradguard.profiles").joinpath("builtin")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        data = json.loads(entry.read_text(encoding="utf-8"))
        profile = profile_from_dict(data, source=f"builtin/{entry.name}")
        if profile.name in out:
            raise ProfileError(f"two built-in profiles are named {profile.name!r}")
        out[profile.name] = profile
    return out


def builtin_profile_names() -> list[str]:
    """Names of the built-in profiles (usable wherever a profile path is accepted)."""
    return sorted(builtin_profiles())


def load_builtin_profile(name: str) -> Profile:
    """The built-in profile called ``name`` (e.g. ``"family:qwen2"``)."""
    try:
        return builtin_profiles()[name]
    except KeyError:
        raise ProfileError(f"no built-in profile is named {name!r}; choose one of {builtin_profile_names()}") from None


def user_profiles() -> list[Profile]:
    """Profiles found in the folders of ``$GRADGUARD_PROFILE_PATH`` (unreadable files are skipped with a warning)."""
    out: list[Profile] = []
    for folder in filter(None, os.environ.get(PROFILE_PATH_ENV, "").split(os.pathsep)):
        path = Path(folder).expanduser()
        if not path.is_dir():
            warnings.warn(
                f"{PROFILE_PATH_ENV} names {folder!r}, which is not a folder; ignored", ProfileWarning, stacklevel=2
            )
            continue
        for file in sorted(path.glob("*.json")):
            try:
                out.append(load_profile(file))
            except ProfileError as exc:
                warnings.warn(f"skipping profile {file}: {exc}", ProfileWarning, stacklevel=2)
    return out


def _prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    from gradguard.prompting import template_prompt  # imports transformers: only when a tokenizer is at hand

    return template_prompt(tokenizer, messages)


def token_at_offset(tokenizer: Any, offset: int, messages: list[dict[str, str]] | None = None) -> str | None:
    """The decoded token at ``offset`` from the end of the templated probe prompt (None if it is too short)."""
    try:
        ids = _prompt_ids(tokenizer, messages or _PROBE_MESSAGES)
    except Exception:
        return None
    if -offset > len(ids):
        return None
    return str(tokenizer.decode([ids[offset]]))


def _check_anchor(profile: Profile, tokenizer: Any) -> None:
    if profile.anchor_token is None or tokenizer is None:
        return
    found = token_at_offset(tokenizer, profile.spt_offset)
    if found is not None and found != profile.anchor_token:
        warnings.warn(
            f"profile {profile.name!r}: offset {profile.spt_offset} lands on {found!r} in this tokenizer's prompts, "
            f"not on {profile.anchor_token!r} as when the profile was made; pass spt_offset explicitly or build a "
            "profile for this model with `gradguard profile build --model SRC --paraphrases FILE.jsonl`",
            ProfileWarning,
            stacklevel=3,
        )


def _same_id(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and str(a).strip().rstrip("/").lower() == str(b).strip().rstrip("/").lower()


def resolve_profile(
    model: Any,
    tokenizer: Any,
    *,
    model_id: str | None = None,
    profile: Profile | str | os.PathLike[str] | None = None,
    strict: bool = True,
) -> Profile:
    """The profile to score ``model`` with (see the module docstring for the order).

    ``strict=False`` turns a chat-template fingerprint mismatch into a warning. A layer
    count, hidden size or ``model_type`` mismatch is always a
    :class:`~gradguard.profiles.errors.ProfileMismatchError`.
    """
    if profile is not None:
        chosen = load_profile(profile)
        check_compatible(chosen, model, tokenizer, strict=strict)
        _check_anchor(chosen, tokenizer)
        return chosen

    model_type, num_layers, hidden = model_dims(model)
    ident = (
        model_id
        or getattr(model, "name_or_path", None)
        or getattr(getattr(model, "config", None), "_name_or_path", None)
    )
    measured = [p for p in (*user_profiles(), *builtin_profiles().values()) if p.kind != "family-default"]

    for p in measured:
        if _same_id(p.model_id, ident):
            check_compatible(p, model, tokenizer, strict=strict)
            _check_anchor(p, tokenizer)
            return p

    fp = chat_template_fingerprint(tokenizer)
    if fp is not None:
        for p in measured:
            if (
                p.chat_template_fingerprint == fp
                and p.model_type == model_type
                and p.num_layers == num_layers
                and p.hidden_size == hidden
            ):
                _check_anchor(p, tokenizer)
                return p

    family = FAMILY_DEFAULTS.get(str(model_type))
    reason = f"model_type {model_type!r} has no family default"
    if family is not None:
        p = load_builtin_profile(family)
        text = template_text(tokenizer) or ""
        if p.template_marker is None or p.template_marker in text:
            _check_anchor(p, tokenizer)
            return p
        reason = f"its chat template lacks the {family} marker {p.template_marker!r}"

    name = ident or "SRC"
    raise ProfileNotFoundError(
        f"no profile applies to {name!r} ({reason}, and no measured profile matches its id or chat template); "
        f"build one with `gradguard profile build --model {name} --paraphrases PARAPHRASES.jsonl --out PROFILE.json` "
        f"and pass it (profile=PROFILE.json), put it in a folder listed in ${PROFILE_PATH_ENV}, "
        "or pass spt_offset explicitly"
    )


def manual_profile(
    model: Any, spt_offset: int, layer_span: tuple[int, int] | None = None, *, name: str | None = None
) -> Profile:
    """An uncalibrated profile for an explicitly given offset (and span), e.g. when no profile applies.

    Its ``confidence`` is always ``(None, None)``.
    """
    model_type, num_layers, hidden = model_dims(model)
    return Profile(
        name=name or f"manual:k={spt_offset}",
        kind="manual",
        model_type=str(model_type),
        num_layers=num_layers,
        hidden_size=hidden,
        spt_offset=spt_offset,
        layer_span=layer_span,
        notes="Offset given explicitly by the caller.",
    )
