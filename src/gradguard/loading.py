"""Load a chat model and its tokenizer from a Hugging Face id, a local folder, a ``.gguf`` file or the embedded default.

GGUF files are de-quantized to fp32 by transformers (tens of seconds); the result is cached as
safetensors under :func:`gradguard.cache.cache_dir` so later loads take seconds.
Nothing is downloaded: a Hugging Face id must already be in the local Hugging Face cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from gradguard.cache import cache_dir
from gradguard.embedded import EMBEDDED_MODEL_ID, EMBEDDED_SHA256, assemble_embedded_gguf
from gradguard.errors import EmbeddedModelError, ModelSourceError, UnsupportedModelError

__all__ = ["load_model", "DEFAULT_MODEL"]

logger = logging.getLogger(__name__)

#: The name under which the embedded default model is reported.
DEFAULT_MODEL = EMBEDDED_MODEL_ID
_COMPLETE = ".complete"


def load_model(
    source: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Load ``(model, tokenizer, name)`` from ``source``.

    ``source`` is ``None`` (the embedded Qwen2.5-Coder-0.5B-Instruct), a path to a ``.gguf``
    file, a local model folder, or a Hugging Face model id already in the local cache.
    ``name`` is the model id reported in results (the Hub id for the default model).
    The model is returned in eval mode.
    """
    if source is None:
        folder = _embedded_cache_folder()
        model, tok = _load_folder(folder, dtype, hint=f"delete {folder} and run again to rebuild it")
        return model, tok, DEFAULT_MODEL
    text = os.fspath(source)
    path = Path(text).expanduser()
    if text.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelSourceError(f"GGUF file {text!r} does not exist; pass the path of an existing .gguf file")
        folder = _gguf_cache_folder(path)
        model, tok = _load_folder(folder, dtype, hint=f"delete {folder} and run again to rebuild it")
        return model, tok, path.stem
    if path.is_dir():
        model, tok = _load_folder(path, dtype, hint=f"check that {path} holds config.json, weights and a tokenizer")
        return model, tok, str(path)
    if path.exists():
        raise ModelSourceError(
            f"{text!r} is a file but not a .gguf file; pass a model folder, a .gguf file or a Hub id"
        )
    model, tok = _load_hub_id(text, dtype)
    return model, tok, text


def _load_hub_id(model_id: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        config = AutoConfig.from_pretrained(model_id, local_files_only=True)
    except OSError as exc:
        raise ModelSourceError(
            f"model {model_id!r} is neither a local folder, a .gguf file, nor in the local Hugging Face cache "
            f"(gradguard never downloads at run time); download it first, e.g. `hf download {model_id}`, "
            "or pass a local folder"
        ) from exc
    _check_causal(config, model_id)
    model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(model_id, local_files_only=True)
    return model.eval(), tok


def _check_causal(config: object, name: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UnsupportedModelError(
            f"{name!r} has model_type {getattr(config, 'model_type', '?')!r}, which is not a causal language model; "
            "gradguard scores decoder-only chat models (AutoModelForCausalLM)"
        )


def _load_folder(
    folder: Path, dtype: torch.dtype, *, hint: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot read a model config from {folder}: {exc}; {hint}") from exc
    _check_causal(config, str(folder))
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # corrupt safetensors, truncated files, ...
        raise ModelSourceError(f"cannot load the model in {folder}: {exc}; {hint}") from exc
    return model.eval(), tok


def _embedded_cache_folder() -> Path:
    folder = cache_dir() / "models" / f"qwen2.5-coder-0.5b-instruct-q4_k_m-{EMBEDDED_SHA256[:12]}"
    if (folder / _COMPLETE).is_file():
        return folder
    gguf = folder.parent / f"{folder.name}.gguf"
    logger.warning("gradguard: assembling and de-quantizing the embedded model once (about a minute)")
    assemble_embedded_gguf(gguf)
    try:
        _dequantize_into(gguf, folder)
    finally:
        gguf.unlink(missing_ok=True)
    return folder


def _gguf_cache_folder(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if not (folder / _COMPLETE).is_file():
        logger.warning("gradguard: de-quantizing %s once; the result is cached in %s", gguf, folder)
        _dequantize_into(gguf, folder)
    return folder


def _dequantize_into(gguf: Path, folder: Path) -> None:
    """De-quantize ``gguf`` to fp32 and save it (model + tokenizer) as a regular folder, atomically."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses a GGUF-loaded model: rebuild it from its config with the same weights.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        rebuilt = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        rebuilt.load_state_dict(loaded.state_dict(), strict=True)
        rebuilt.generation_config = loaded.generation_config
        del loaded
        rebuilt.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / _COMPLETE).write_text(EMBEDDED_SHA256 + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except EmbeddedModelError:
        raise
    except Exception as exc:
        raise ModelSourceError(f"cannot de-quantize {gguf}: {exc}; is the `gguf` package installed?") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
