"""Reading and writing profiles: sorted JSON stamped with the gradguard and schema versions; JSON only, never pickle."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gradguard.profiles.errors import ProfileError, ProfileWarning
from gradguard.profiles.schema import SCHEMA_VERSION, Profile, library_version

__all__ = ["profile_json", "profile_from_dict", "load_profile", "save_profile"]


def profile_json(profile: Profile) -> str:
    """Sorted, indented JSON stamped with the current gradguard and schema versions."""
    data = profile.model_dump(mode="json")
    data["gradguard_version"] = library_version()
    data["schema_version"] = SCHEMA_VERSION
    try:
        return json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError as exc:
        raise ProfileError(f"profile {profile.name!r} holds NaN or infinity, which JSON cannot store: {exc}") from exc


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "missing":
            parts.append(f"missing required key {loc!r}")
        else:
            parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def profile_from_dict(data: Any, *, source: str = "<dict>") -> Profile:
    """Validate a parsed profile; :class:`ProfileError` names each missing or invalid key."""
    if not isinstance(data, dict):
        raise ProfileError(f"profile {source} must be a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        warnings.warn(
            f"profile {source} uses schema version {version}, newer than this gradguard's {SCHEMA_VERSION}; "
            "upgrade gradguard if it fails to load or behaves unexpectedly",
            ProfileWarning,
            stacklevel=3,
        )
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(
            f"profile {source} is invalid: {_validation_message(exc)}; rebuild it with "
            "`gradguard profile build --model SRC --paraphrases FILE.jsonl --out PROFILE.json`"
        ) from None
    profile._source = source
    return profile


def load_profile(source: Profile | str | os.PathLike[str]) -> Profile:
    """Load a profile from a JSON file, or a built-in profile by name (e.g. ``"family:qwen2"``).

    A :class:`Profile` is returned unchanged. Only JSON is parsed; nothing is executed.
    """
    if isinstance(source, Profile):
        return source
    text = os.fspath(source)
    path = Path(text).expanduser()
    if not path.is_file():
        from gradguard.profiles.lookup import builtin_profile_names, load_builtin_profile

        if text in builtin_profile_names():
            return load_builtin_profile(text)
        raise ProfileError(
            f"profile {text!r} is neither a file nor a built-in profile; pass a profile JSON path or one of "
            f"{sorted(builtin_profile_names())}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ProfileError(
            f"profile {path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "rebuild it with `gradguard profile build`"
        ) from None
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc}") from exc
    return profile_from_dict(data, source=str(path))


def save_profile(profile: Profile, path: str | os.PathLike[str]) -> Path:
    """Write ``profile`` as sorted JSON to ``path`` (atomically) and return the path."""
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    text = profile_json(profile)
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)
    return p


