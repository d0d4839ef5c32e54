"""Generate, score and cache one answer per question — resumable.

Every finished question is appended at once to ``CACHE_DIR/records.jsonl`` (flushed and
fsynced), so an interrupted run loses at most the question in progress and the next run
with the same settings continues where it stopped. Two keys identify a record:

- the **generation key**: model name, question, system prompt, ``max_new_tokens`` and
  generation arguments — what determines the (greedy) answer;
- the **scoring key**: the generation key plus the semantic-preserving offset and the
  layer span — what determines the scores.

A record whose scoring key matches is reused as is. One whose generation key matches but
was scored at another offset or span is re-scored from its cached answer tokens (no
generation). ``gradguard eval`` and ``gradguard calibrate`` share this cache, so
calibrating after an evaluation (or the reverse) generates nothing again.
Judging happens later (:mod:`gradguard.evaluation.report`), so a new judge needs no new pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from gradguard.errors import GradguardError, InputError
from gradguard.evaluation.data import DEFAULT_SYSTEM_PROMPT, QAItem, qa_messages
from gradguard.result import ScoreResult

__all__ = [
    "CACHE_FILE",
    "DEFAULT_MAX_NEW_TOKENS",
    "CacheWarning",
    "HarnessSettings",
    "CachedRecord",
    "ResultCache",
    "ScorerLike",
    "generation_key",
    "scoring_key",
    "run_harness",
    "make_scorer",
]

CACHE_FILE = "records.jsonl"
#: Short-answer QA needs few tokens; longer answers only add text the judges ignore.
DEFAULT_MAX_NEW_TOKENS = 24


class CacheWarning(UserWarning):
    """A cache line could not be read (e.g. cut short by an interruption) and is ignored."""


class ScorerLike(Protocol):
    """What the harness needs from :class:`gradguard.GradScorer`."""

    model_name: str
    spt_offset: int
    layer_span: tuple[int, int]

    def generate_and_score(self, messages: Any, *, max_new_tokens: int = ..., **kw: Any) -> ScoreResult: ...

    def score(self, messages: Any, response: str | Sequence[int]) -> ScoreResult: ...


class HarnessSettings(BaseModel):
    """Everything besides the question that determines a cached result."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1)
    generate_kwargs: dict[str, Any] = Field(default_factory=dict)
    spt_offset: int
    layer_span: tuple[int, int]


class CachedRecord(BaseModel):
    """One question's cached outcome: the scored answer, or the error that prevented scoring."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gen_key: str
    score_key: str
    index: int
    query: str
    answers: tuple[str, ...]
    result: ScoreResult | None = None
    error: str | None = None


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:24]


def generation_key(query: str, settings: HarnessSettings) -> str:
    """Hash of what determines the generated answer."""
    return _digest(
        {
            "model": settings.model,
            "query": query,
            "system_prompt": settings.system_prompt,
            "max_new_tokens": settings.max_new_tokens,
            "generate_kwargs": settings.generate_kwargs,
        }
    )


def scoring_key(gen_key: str, settings: HarnessSettings) -> str:
    """Hash of what determines the scores of a generated answer."""
    return _digest({"gen": gen_key, "spt_offset": settings.spt_offset, "layer_span": list(settings.layer_span)})


class ResultCache:
    """An append-only JSONL cache of :class:`CachedRecord` in ``folder/records.jsonl``."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / CACHE_FILE
        self.by_score: dict[str, CachedRecord] = {}
        self.by_gen: dict[str, CachedRecord] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            # an interrupted write left a partial last line: drop it so appends start on a fresh line
            cut = raw.rfind(b"\n") + 1
            warnings.warn(f"{self.path}: dropping an incomplete last line (interrupted run)", CacheWarning, stacklevel=3)
            with self.path.open("r+b") as fh:
                fh.truncate(cut)
            raw = raw[:cut]
        for lineno, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = CachedRecord.model_validate_json(line)
            except ValueError as exc:
                warnings.warn(f"{self.path}:{lineno}: unreadable cache line ignored ({exc})", CacheWarning, stacklevel=3)
                continue
            self.by_score[rec.score_key] = rec
            if rec.result is not None:
                self.by_gen.setdefault(rec.gen_key, rec)

    def __len__(self) -> int:
        return len(self.by_score)

    def add(self, record: CachedRecord) -> None:
        """Append ``record`` and make it durable before returning."""
        self.folder.mkdir(parents=True, exist_ok=True)
        line = record.model_dump_json() + "\n"
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.by_score[record.score_key] = record
        if record.result is not None:
            self.by_gen.setdefault(record.gen_key, record)


def run_harness(
    scorer: ScorerLike,
    items: Sequence[QAItem],
    *,
    cache_dir: str | os.PathLike[str],
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    generate_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[CachedRecord]:
    """One scored answer per question, from the cache where possible (see the module docstring).

    Answers are generated greedily (unless ``generate_kwargs`` says otherwise) with the
    messages ``[system_prompt, question]``. A question whose scoring fails with a
    gradguard error (e.g. too long for the context) is recorded with ``error`` and no
    result; it counts as unscored. Shows a progress bar with the number of cache hits.
    """
    settings = HarnessSettings(
        model=scorer.model_name,
        system_prompt=system_prompt,
        max_new_tokens=max_new_tokens,
        generate_kwargs=dict(generate_kwargs or {}),
        spt_offset=int(scorer.spt_offset),
        layer_span=tuple(scorer.layer_span),  # type: ignore[arg-type]
    )
    cache = ResultCache(cache_dir)
    records: list[CachedRecord] = []
    hits = rescored = generated = 0
    bar = tqdm(items, desc="eval", unit="q", disable=not progress)
    for item in bar:
        gk = generation_key(item.query, settings)
        sk = scoring_key(gk, settings)
        cached = cache.by_score.get(sk)
        if cached is not None:
            records.append(cached.model_copy(update={"index": item.index, "answers": item.answers}))
            hits += 1
        else:
            messages = qa_messages(item.query, system_prompt)
            result: ScoreResult | None = None
            error: str | None = None
            previous = cache.by_gen.get(gk)
            try:
                if previous is not None and previous.result is not None:
                    result = scorer.score(messages, list(previous.result.token_ids))
                    rescored += 1
                else:
                    result = scorer.generate_and_score(messages, max_new_tokens=max_new_tokens, **settings.generate_kwargs)
                    generated += 1
            except GradguardError as exc:
                error = f"{type(exc).__name__}: {exc}"
            rec = CachedRecord(
                gen_key=gk, score_key=sk, index=item.index, query=item.query, answers=item.answers, result=result, error=error
            )
            cache.add(rec)
            records.append(rec)
        bar.set_postfix(cached=hits, rescored=rescored, generated=generated, refresh=False)
    return records


def make_scorer(
    source: str | None,
    *,
    profile: str | os.PathLike[str] | None = None,
    spt_offset: int | None = None,
    layer_span: tuple[int, int] | None = None,
    strict: bool = True,
) -> tuple[Any, Any]:
    """``(scorer, profile)``: load the model, resolve its profile, and build a scorer at the profile's settings.

    ``spt_offset``/``layer_span`` override the profile's (the profile's calibration then
    no longer applies and confidences are None).
    """
    from gradguard.profiles.cli import load_model_source
    from gradguard.profiles.lookup import resolve_profile
    from gradguard.scorer import GradScorer

    if spt_offset is not None and spt_offset >= 0:
        raise InputError(f"spt_offset={spt_offset} must be negative (e.g. -2)")
    model, tokenizer, name = load_model_source(source)
    resolved = resolve_profile(model, tokenizer, model_id=name, profile=profile, strict=strict)
    if spt_offset is None and layer_span is None:
        scorer = GradScorer(model, tokenizer, profile=resolved, model_name=name, strict=strict)
    else:
        offset = spt_offset if spt_offset is not None else resolved.spt_offset
        span = layer_span if layer_span is not None else resolved.layer_span
        scorer = GradScorer(model, tokenizer, spt_offset=offset, layer_span=span, model_name=name)
    return scorer, resolved
