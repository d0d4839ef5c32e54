"""Generate, score and cache one answer per question — resumable.

Every finished question is appended at once to ``CACHE_DIR/records.jsonl`` (flushed and
fsynced), so an interrupted run loses at most the question in progress and the next run
with the same settings continues where it stopped. The question is asked the way its
:class:`~gradguard.tasks.Task` asks it (system prompt, user template, context). Two keys
identify a record:

- the **generation key**: model name, the chat messages, ``max_new_tokens`` and
  generation arguments — what determines the (greedy) answer;
- the **scoring key**: the generation key plus the semantic-preserving offset and the
  layer span — what determines the scores.

A record whose scoring key matches is reused as is. One whose generation key matches but
was scored at another offset or span is re-scored from its cached answer tokens (no
generation). ``gradguard eval`` and ``gradguard calibrate`` share this cache, so
calibrating after an evaluation (or the reverse) generates nothing again.
Judging happens later (:mod:`gradguard.calibration.labels`), so a new judge needs no new pass.

With ``hidden_layers`` the record also keeps the hidden states the scoring pass computed at
those layers (:class:`~gradguard.result.HiddenStates`, stored as base64 float16), which a
calibration probe is fitted on; a record without the layers asked for is re-scored from its
cached answer tokens.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from gradguard.data import QAItem
from gradguard.errors import GradguardError, InputError
from gradguard.result import HIDDEN_POSITIONS, HiddenStates, ScoreResult
from gradguard.tasks import Task, builtin_task

__all__ = [
    "CACHE_FILE",
    "DEFAULT_MAX_NEW_TOKENS",
    "CacheWarning",
    "HarnessSettings",
    "KeyedRecord",
    "CachedRecord",
    "RecordCache",
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
    hidden_layers: tuple[int, ...]  # read and set only when the calibration needs hidden states

    def generate_and_score(self, messages: Any, *, max_new_tokens: int = ..., **kw: Any) -> ScoreResult: ...

    def score(self, messages: Any, response: str | Sequence[int]) -> ScoreResult: ...


class HarnessSettings(BaseModel):
    """Everything besides the question that determines a cached result."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    task: Task = Field(default_factory=lambda: builtin_task("closed-qa"))
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1)
    generate_kwargs: dict[str, Any] = Field(default_factory=dict)
    spt_offset: int
    layer_span: tuple[int, int]


class KeyedRecord(BaseModel):
    """A cache line: the keys of what generated it (``gen_key``) and of what scored it (``score_key``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gen_key: str
    score_key: str

    @property
    def has_answer(self) -> bool:
        """True when the record holds an answer that can be re-scored (indexed by its generation key)."""
        return True


class CachedRecord(KeyedRecord):
    """One question's cached outcome: the scored answer, or the error that prevented scoring."""

    index: int
    query: str
    answers: tuple[str, ...]
    is_impossible: bool = False
    group: str | None = None
    result: ScoreResult | None = None
    error: str | None = None
    hidden_layers: tuple[int, ...] = ()
    hidden: str | None = Field(None, repr=False, description="base64 float16 array [positions, layers, d].")
    hidden_d: int | None = None

    def hidden_array(self) -> NDArray[np.float32] | None:
        """The stored hidden states as ``[len(HIDDEN_POSITIONS), len(hidden_layers), d]`` fp32, or None."""
        if self.hidden is None or self.hidden_d is None:
            return None
        flat = np.frombuffer(base64.b64decode(self.hidden), dtype=np.float16).astype(np.float32)
        return flat.reshape(len(HIDDEN_POSITIONS), len(self.hidden_layers), self.hidden_d)

    def hidden_states(self) -> HiddenStates | None:
        """The stored hidden states as a :class:`HiddenStates` (what a live result carries)."""
        arr = self.hidden_array()
        if arr is None:
            return None
        return HiddenStates(layers=self.hidden_layers, states={p: arr[i] for i, p in enumerate(HIDDEN_POSITIONS)})

    @property
    def has_answer(self) -> bool:
        """True when the answer was scored (its tokens can be re-scored)."""
        return self.result is not None


def encode_hidden(hidden: HiddenStates) -> tuple[str, int]:
    """``(base64 float16, d)`` of a result's hidden states, in :data:`HIDDEN_POSITIONS` order."""
    arr = np.stack([np.asarray(hidden.states[p], dtype=np.float32) for p in HIDDEN_POSITIONS]).astype(np.float16)
    return base64.b64encode(arr.tobytes()).decode("ascii"), int(arr.shape[-1])


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:24]


def generation_key(messages: Sequence[dict[str, str]], settings: HarnessSettings) -> str:
    """Hash of what determines the generated answer."""
    return _digest(
        {
            "model": settings.model,
            "messages": [dict(m) for m in messages],
            "max_new_tokens": settings.max_new_tokens,
            "generate_kwargs": settings.generate_kwargs,
        }
    )


#: Bumped when a result gains fields calibration reads (2: per-token entropies), so older records are re-scored.
SCORING_FORMAT = 2


def scoring_key(gen_key: str, settings: HarnessSettings) -> str:
    """Hash of what determines the scores of a generated answer."""
    return _digest(
        {
            "gen": gen_key,
            "spt_offset": settings.spt_offset,
            "layer_span": list(settings.layer_span),
            "format": SCORING_FORMAT,
        }
    )


R = TypeVar("R", bound=KeyedRecord)


class RecordCache(Generic[R]):
    """An append-only JSONL cache of ``record_type`` records in ``folder/filename``, by scoring and generation key."""

    def __init__(self, folder: str | os.PathLike[str], record_type: type[R], filename: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / filename
        self.record_type = record_type
        self.by_score: dict[str, R] = {}
        self.by_gen: dict[str, R] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            # an interrupted write left a partial last line: drop it so appends start on a fresh line
            cut = raw.rfind(b"\n") + 1
            warnings.warn(
                f"{self.path}: dropping an incomplete last line (interrupted run)", CacheWarning, stacklevel=3
            )
            with self.path.open("r+b") as fh:
                fh.truncate(cut)
            raw = raw[:cut]
        for lineno, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = self.record_type.model_validate_json(line)
            except ValueError as exc:
                warnings.warn(
                    f"{self.path}:{lineno}: unreadable cache line ignored ({exc})", CacheWarning, stacklevel=3
                )
                continue
            self.by_score[rec.score_key] = rec
            if rec.has_answer:
                self.by_gen.setdefault(rec.gen_key, rec)

    def __len__(self) -> int:
        return len(self.by_score)

    def add(self, record: R) -> None:
        """Append ``record`` and make it durable before returning."""
        self.folder.mkdir(parents=True, exist_ok=True)
        line = record.model_dump_json() + "\n"
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.by_score[record.score_key] = record
        if record.has_answer:
            self.by_gen.setdefault(record.gen_key, record)


class ResultCache(RecordCache[CachedRecord]):
    """The QA harness's cache: :class:`CachedRecord` lines in ``folder/records.jsonl``."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        super().__init__(folder, CachedRecord, CACHE_FILE)


def run_harness(
    scorer: ScorerLike,
    items: Sequence[QAItem],
    *,
    cache_dir: str | os.PathLike[str],
    task: Task | None = None,
    max_new_tokens: int | None = None,
    generate_kwargs: dict[str, Any] | None = None,
    hidden_layers: Sequence[int] = (),
    progress: bool = True,
) -> list[CachedRecord]:
    """One scored answer per question, from the cache where possible (see the module docstring).

    Answers are generated greedily (unless ``generate_kwargs`` says otherwise) with the
    messages ``task`` formats (default: the ``closed-qa`` task), at most ``max_new_tokens``
    (default: the task's). A question whose scoring fails with a gradguard error (e.g. too
    long for the context) is recorded with ``error`` and no result; it counts as unscored.
    Shows a progress bar with the number of cache hits.
    """
    task = task or builtin_task("closed-qa")
    hidden_layers = tuple(int(layer) for layer in hidden_layers)
    settings = HarnessSettings(
        model=scorer.model_name,
        task=task,
        max_new_tokens=max_new_tokens if max_new_tokens is not None else task.max_new_tokens,
        generate_kwargs=dict(generate_kwargs or {}),
        spt_offset=int(scorer.spt_offset),
        layer_span=tuple(scorer.layer_span),
    )
    cache = ResultCache(cache_dir)
    records: list[CachedRecord] = []
    hits = rescored = generated = 0
    wanted = set(hidden_layers)
    previous_layers = tuple(getattr(scorer, "hidden_layers", ()))
    if hidden_layers:
        scorer.hidden_layers = tuple(sorted(set(previous_layers) | wanted))
    bar = tqdm(items, desc=f"{task.name}", unit="q", disable=not progress)
    try:
        for item in bar:
            messages = task.item_messages(item)
            gk = generation_key(messages, settings)
            sk = scoring_key(gk, settings)
            update = {
                "index": item.index,
                "answers": item.answers,
                "is_impossible": item.is_impossible,
                "group": item.group,
            }
            cached = cache.by_score.get(sk)
            if cached is not None and (cached.result is None or wanted <= set(cached.hidden_layers)):
                records.append(cached.model_copy(update=update))
                hits += 1
                bar.set_postfix(cached=hits, rescored=rescored, generated=generated, refresh=False)
                continue
            result: ScoreResult | None = None
            error: str | None = None
            previous = cached if cached is not None and cached.result is not None else cache.by_gen.get(gk)
            try:
                if previous is not None and previous.result is not None:
                    result = scorer.score(messages, list(previous.result.token_ids))
                    rescored += 1
                else:
                    result = scorer.generate_and_score(
                        messages, max_new_tokens=settings.max_new_tokens, **settings.generate_kwargs
                    )
                    generated += 1
            except GradguardError as exc:
                error = f"{type(exc).__name__}: {exc}"
            hidden, d = (None, None)
            layers: tuple[int, ...] = ()
            if result is not None and result.hidden is not None:
                hidden, d = encode_hidden(result.hidden)
                layers = result.hidden.layers
            rec = CachedRecord(
                gen_key=gk,
                score_key=sk,
                query=item.query,
                result=result,
                error=error,
                hidden_layers=layers,
                hidden=hidden,
                hidden_d=d,
                **update,
            )
            cache.add(rec)
            records.append(rec)
            bar.set_postfix(cached=hits, rescored=rescored, generated=generated, refresh=False)
    finally:
        if hidden_layers:
            scorer.hidden_layers = previous_layers
    return records


def make_scorer(
    source: str | None,
    *,
    profile: str | os.PathLike[str] | None = None,
    spt_offset: int | None = None,
    layer_span: tuple[int, int] | None = None,
    strict: bool = True,
    device: str | None = None,
) -> tuple[Any, Any]:
    """``(scorer, profile)``: load the model, resolve its profile, and build a scorer at the profile's settings.

    ``spt_offset``/``layer_span`` override the profile's (the profile's calibration then
    no longer applies and confidences are None). ``device`` moves the model (e.g. ``"cuda"``).
    """
    from gradguard.profiles.cli import load_model_source
    from gradguard.profiles.lookup import resolve_profile
    from gradguard.scorer import GradScorer

    if spt_offset is not None and spt_offset >= 0:
        raise InputError(f"spt_offset={spt_offset} must be negative (e.g. -2)")
    model, tokenizer, name = load_model_source(source)
    if device:
        model.to(device)
    resolved = resolve_profile(model, tokenizer, model_id=name, profile=profile, strict=strict)
    if spt_offset is None and layer_span is None:
        scorer = GradScorer(model, tokenizer, profile=resolved, model_name=name, strict=strict)
    else:
        offset = spt_offset if spt_offset is not None else resolved.spt_offset
        span = layer_span if layer_span is not None else resolved.layer_span
        scorer = GradScorer(model, tokenizer, spt_offset=offset, layer_span=span, model_name=name)
    return scorer, resolved
