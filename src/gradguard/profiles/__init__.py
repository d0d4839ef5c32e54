"""Per-model profiles: the semantic-preserving offset, the layer span, SPS and calibration.

>>> from gradguard.profiles import resolve_profile
>>> profile = resolve_profile(model, tokenizer, model_id="Qwen/Qwen2.5-Coder-0.5B-Instruct")  # doctest: +SKIP
>>> profile.spt_offset, profile.layer_span, profile.name                                      # doctest: +SKIP

See ``docs/profiles.md``. Importing this package loads neither torch models nor
scikit-learn; SPS building and plotting live in :mod:`gradguard.profiles.build` and
:mod:`gradguard.profiles.plot`.
"""

from gradguard.profiles.compat import check_compatible
from gradguard.profiles.errors import (
    CalibrationMissingError,
    ProfileError,
    ProfileMismatchError,
    ProfileNotFoundError,
    ProfileWarning,
)
from gradguard.profiles.fingerprint import chat_template_fingerprint
from gradguard.profiles.io import load_profile, profile_json, save_profile
from gradguard.profiles.lookup import (
    FAMILY_DEFAULTS,
    builtin_profile_names,
    builtin_profiles,
    load_builtin_profile,
    manual_profile,
    resolve_profile,
)
from gradguard.profiles.schema import SCHEMA_VERSION, Profile, TaskCalibration
from gradguard.profiles.summary import profile_summary

__all__ = [
    "SCHEMA_VERSION",
    "FAMILY_DEFAULTS",
    "TaskCalibration",
    "Profile",
    "ProfileError",
    "ProfileMismatchError",
    "ProfileNotFoundError",
    "CalibrationMissingError",
    "ProfileWarning",
    "builtin_profile_names",
    "builtin_profiles",
    "chat_template_fingerprint",
    "load_builtin_profile",
    "load_profile",
    "manual_profile",
    "resolve_profile",
    "save_profile",
    "profile_json",
    "profile_summary",
    "check_compatible",
]
