"""Profile resolution: explicit → model id → chat-template fingerprint → family default → error."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from gradguard.errors import UnknownOffsetError
from gradguard.profiles import (
    FAMILY_DEFAULTS,
    Profile,
    ProfileMismatchError,
    ProfileNotFoundError,
    ProfileWarning,
    builtin_profiles,
    check_compatible,
    load_builtin_profile,
    load_profile,
    resolve_profile,
    save_profile,
)
from gradguard.profiles.lookup import PROFILE_PATH_ENV, token_at_offset
from gradguard.testing import make_tiny_model, make_tiny_profile

EMBEDDED_ID = "Qwen/Qwen2.5-Coder-0.5B-Instruct"


def measured(tok: object, **kw: object) -> Profile:
    fields: dict[str, object] = dict(
        name="user:tiny-qwen2", model_id="acme/tiny-qwen2", spt_offset=-1, layer_span=(1, 4)
    )
    return make_tiny_profile(tok, **{**fields, **kw})


@pytest.fixture()
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(PROFILE_PATH_ENV, str(tmp_path))
    return tmp_path


def _quiet_resolve(*args: object, **kw: object) -> Profile:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProfileWarning)
        return resolve_profile(*args, **kw)  # type: ignore[arg-type]


def test_family_defaults_are_the_papers_offsets() -> None:
    expected = {"llama": -4, "qwen2": -3, "qwen3": -3, "mistral": -2}
    for model_type, offset in expected.items():
        p = load_builtin_profile(FAMILY_DEFAULTS[model_type])
        assert p.kind == "family-default" and p.spt_offset == offset and p.model_type == model_type
        assert not p.calibrations and p.layer_span is None


def test_family_default_for_a_model_without_a_measured_profile(user_dir: Path) -> None:
    model, tok = make_tiny_model("llama")
    p = _quiet_resolve(model, tok, model_id="someone/llama-like")
    assert p.name == "family:llama3" and p.spt_offset == -4


def test_family_default_warns_when_its_anchor_token_is_elsewhere(user_dir: Path) -> None:
    # the tiny byte-level tokenizer splits "assistant" into letters: -3 is not <|im_start|>
    model, tok = make_tiny_model("qwen2")
    with pytest.warns(ProfileWarning, match="<|im_start|>"):
        resolve_profile(model, tok)
    assert token_at_offset(tok, -3) == "n"


def test_family_default_needs_the_family_template(user_dir: Path) -> None:
    model, tok = make_tiny_model("llama")
    tok.chat_template = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"  # a Llama-2 template
    with pytest.raises(ProfileNotFoundError, match="start_header_id"):
        resolve_profile(model, tok)


def test_unknown_family_error_gives_the_build_command(user_dir: Path) -> None:
    model, tok = make_tiny_model("gemma2")
    with pytest.raises(ProfileNotFoundError) as info:
        resolve_profile(model, tok, model_id="acme/gemma-tiny")
    assert "gradguard profile build --model acme/gemma-tiny --paraphrases" in str(info.value)
    assert isinstance(info.value, UnknownOffsetError)


def test_model_id_beats_fingerprint_and_family(user_dir: Path) -> None:
    model, tok = make_tiny_model("qwen2")
    save_profile(measured(tok), user_dir / "a.json")
    save_profile(measured(tok, name="other", model_id="acme/other", spt_offset=-2), user_dir / "b.json")
    assert _quiet_resolve(model, tok, model_id="ACME/tiny-qwen2").name == "user:tiny-qwen2"
    assert _quiet_resolve(model, tok, model_id="acme/other").name == "other"


def test_fingerprint_match_needs_same_dimensions(user_dir: Path) -> None:
    model, tok = make_tiny_model("qwen2")
    save_profile(measured(tok), user_dir / "a.json")
    # unknown id, same template and dimensions: the measured profile
    assert _quiet_resolve(model, tok, model_id="/local/folder").name == "user:tiny-qwen2"
    # same template but a different size: offsets do not transfer, fall back to the family default
    bigger, tok2 = make_tiny_model("qwen2", num_layers=6)
    assert _quiet_resolve(bigger, tok2, model_id="/local/folder").name == "family:qwen2"


def test_exact_id_with_wrong_dimensions_is_an_error(user_dir: Path) -> None:
    model, tok = make_tiny_model("qwen2", num_layers=6)
    save_profile(measured(tok), user_dir / "a.json")
    with pytest.raises(ProfileMismatchError, match="4 layers"):
        resolve_profile(model, tok, model_id="acme/tiny-qwen2")


def test_explicit_profile_wins_and_is_checked(user_dir: Path, tmp_path: Path) -> None:
    model, tok = make_tiny_model("qwen2")
    save_profile(measured(tok), user_dir / "a.json")
    explicit = measured(tok, name="explicit", model_id=None, spt_offset=-3)
    path = save_profile(explicit, tmp_path / "explicit.json")
    for source in (explicit, path, str(path)):
        assert _quiet_resolve(model, tok, model_id="acme/tiny-qwen2", profile=source).name == "explicit"
    assert _quiet_resolve(model, tok, profile="family:qwen2").name == "family:qwen2"
    tok.chat_template = tok.chat_template + " "  # whitespace at the ends does not matter
    assert _quiet_resolve(model, tok, profile=path).name == "explicit"
    tok.chat_template = tok.chat_template.replace("assistant", "model")
    with pytest.raises(ProfileMismatchError):
        resolve_profile(model, tok, profile=path)
    with pytest.warns(ProfileWarning):
        assert resolve_profile(model, tok, profile=path, strict=False).name == "explicit"


def test_manual_profile_for_explicit_offsets() -> None:
    from gradguard.profiles import manual_profile

    model, tok = make_tiny_model("gemma2")
    p = manual_profile(model, -2)
    assert (p.spt_offset, p.kind, p.model_type, p.num_layers) == (-2, "manual", "gemma2", 4)
    check_compatible(p, model, tok)
    with pytest.raises(ValueError):
        manual_profile(model, 0)


def test_unreadable_user_profiles_are_skipped_with_a_warning(user_dir: Path) -> None:
    (user_dir / "broken.json").write_text("{")
    model, tok = make_tiny_model("llama")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_profile(model, tok).name == "family:llama3"
    assert any("broken.json" in str(w.message) and w.category is ProfileWarning for w in caught)


def test_builtin_embedded_profile_is_measured_on_enough_queries() -> None:
    profiles = [p for p in builtin_profiles().values() if p.model_id == EMBEDDED_ID]
    assert len(profiles) == 1
    p = profiles[0]
    assert p.kind == "measured" and p.model_type == "qwen2"
    assert (p.num_layers, p.hidden_size) == (24, 896)
    assert p.sps is not None and p.sps.data.n_queries >= 200
    assert p.spt_offset in p.sps.candidate_offsets
    means = dict(zip(p.sps.offsets, p.sps.top_half_mean, strict=True))
    assert means[p.spt_offset] == max(means[k] for k in p.sps.candidate_offsets)
    assert p.layer_span == (12, 24)
    assert p.chat_template_fingerprint is not None
    assert load_profile(p.name) is p  # built-ins load by name
