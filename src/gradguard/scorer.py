"""`GradScorer`: score a (prompt, response) pair with SemGrad, ParaGrad and HybridGrad.

All scores are uncertainties — larger means the model is less sure of its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import torch
from transformers import DynamicCache, GenerationMixin, PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList, StopStringCriteria

from gradguard.calibration.model import predict, required_layers
from gradguard.capture import GenerationCapture, GenerationStates, untrusted_settings
from gradguard.errors import (
    ContextLengthError,
    GenerationCancelled,
    GradguardError,
    InputError,
    UnsupportedModelError,
)
from gradguard.fast_path import RawScores, ScoreRow, decoder_layers, fast_scores, fast_scores_rows
from gradguard.loading import load_model
from gradguard.oracle import oracle_scores
from gradguard.profiles import Profile, ProfileError, ProfileWarning, manual_profile, resolve_profile
from gradguard.profiles.schema import TaskCalibration
from gradguard.prompting import Messages, Tools, end_of_turn_ids, template_prompt, tokenize_response
from gradguard.result import CalibrationInfo, ScoreResult, Timings, with_messages
from gradguard.reuse_path import ReuseRow, reused_scores
from gradguard.tasks import BUILTIN_TASKS, UnknownTaskError, check_task_name
from gradguard.token_text import token_pieces

__all__ = ["GradScorer", "combine_scores", "SpanPlan", "SpanFn"]

logger = logging.getLogger(__name__)


def combine_scores(raw: RawScores) -> dict[str, float]:
    """Turn norms and per-token statistics into the reported scores (see :class:`ScoreResult`); the token
    statistics are taken over the loss window (:attr:`RawScores.window`)."""
    nll, entropy = raw.window_nll, raw.window_entropy
    n_tokens = len(nll)
    mean_entropy = sum(entropy) / n_tokens
    alpha = math.exp(-mean_entropy)
    return {
        "semgrad": raw.semgrad,
        "paragrad": raw.paragrad,
        "exgrad": raw.exgrad,
        "hybridgrad": alpha * raw.paragrad + (1.0 - alpha) * raw.semgrad,
        "alpha": alpha,
        "mean_entropy": mean_entropy,
        "g_nll": sum(nll),
        "mean_nll": sum(nll) / n_tokens,
        "max_nll": max(nll),
    }


_NAN_SCORES = dict.fromkeys(
    ("semgrad", "paragrad", "exgrad", "hybridgrad", "alpha", "mean_entropy", "g_nll", "mean_nll", "max_nll"), math.nan
)


FinishReason = Literal["stop", "length"]


class SpanPlan(NamedTuple):
    """Which tokens of an answer to score: half-open token ranges into the answer's ids (prefill included).

    ``main``: the message-level score's range (``None``: every token after the prefill); it must end
    at the answer's end. ``parts``: ranges scored on their own (one per tool call, say), each with the
    loss restricted to it, in the same batched pass.
    """

    main: tuple[int, int] | None = None
    parts: Sequence[tuple[int, int]] = ()


#: Maps an answer's token ids (prefill included) to the spans to score.
SpanFn = Callable[[list[int]], SpanPlan]


class ScoreRequest(NamedTuple):
    """One request's answers to score in :meth:`GradScorer._score_requests` (arguments as in ``_score_ids``)."""

    prompt: list[int]
    position: int
    ids: list[list[int]]
    task: str | None = None
    finish_reasons: Sequence[FinishReason | None] | None = None
    top_logprobs: int = 0
    n_prefill: int = 0
    spans: SpanFn | None = None
    generate_s: float | None = None
    #: What generation saved for these answers (trusted), and the generation row of the request's one answer.
    reuse: tuple[GenerationStates, int] | None = None


def _wrapped(exc: BaseException, what: str) -> GradguardError:
    err = GradguardError(f"{what}: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


#: The most alternatives per token ``top_logprobs`` may ask for (OpenAI's limit).
MAX_TOP_LOGPROBS = 20


def _check_top_logprobs(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_TOP_LOGPROBS:
        raise InputError(
            f"top_logprobs={k!r}: pass an integer from 0 (none) to {MAX_TOP_LOGPROBS} alternatives per token"
        )
    return int(k)


def _check_stop(stop: Any, extra: Any = None) -> tuple[str, ...]:
    """The non-empty stop strings of ``stop`` (and of a ``stop_strings`` generate argument), in order."""
    out: list[str] = []
    for group in (stop, extra):
        if group is None:
            continue
        items = [group] if isinstance(group, str) else group
        try:
            items = list(items)
        except TypeError:
            raise InputError(f"stop={group!r} is not a list of strings; pass e.g. stop=['\\n\\n']") from None
        for s in items:
            if not isinstance(s, str):
                raise InputError(f"stop string {s!r} is a {type(s).__name__}, not a string; pass e.g. stop=['\\n\\n']")
            if s and s not in out:
                out.append(s)
    return tuple(out)


class _CancelCriteria(StoppingCriteria):
    """Stops every sequence at the next token once ``event`` is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a torch device (``"auto"``: ``cuda`` when available, else ``cpu``); raises :class:`InputError`
    naming a device torch does not know or cannot use."""
    if device is None:
        return None
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(
            f"device={device!r} is not a torch device ({exc}); pass 'cpu', 'cuda', 'cuda:N' or 'auto'"
        ) from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={device!r}: torch sees no CUDA GPU here; pass 'cpu' or 'auto'")
    return target


class GradScorer:
    """Gradient-based uncertainty scorer for a local Hugging Face chat model.

    Example::

        scorer = GradScorer.from_pretrained()          # the embedded Qwen2.5-Coder-0.5B-Instruct
        question = [{"role": "user", "content": "Who proposed evolution by natural selection?"}]
        result = scorer.generate_and_score(question)
        result.response, result.hybridgrad            # larger hybridgrad = less confident

    The semantic-preserving offset, the layer span and the calibration come from a profile:
    ``profile`` (a :class:`~gradguard.profiles.Profile` or a JSON path) or else the one found for the
    model (exact model id → chat-template fingerprint → family default; see ``docs/profiles.md``).
    ``spt_offset`` (negative: from the end of the chat-templated prompt) and ``layer_span`` (the
    half-open range of decoder layers SemGrad averages over) override it; a calibration then
    applies only if it was fitted with the same settings, else ``confidence`` is None. With an
    explicit ``spt_offset`` and no ``profile``, a failed lookup (no profile applies, or the one found
    was measured on a different model) never raises: the scorer runs uncalibrated on a
    :func:`~gradguard.profiles.manual_profile`. An explicit ``profile`` that does not fit still raises.

    ``task`` names the calibration that turns scores into ``confidence`` (``closed-qa``, ``rag``,
    ``chat`` or a task the profile was calibrated for; see :mod:`gradguard.tasks`); every scoring
    method also takes ``task=`` per call. Without one the profile's ``default_task`` applies.
    A task with no calibration in the profile gives ``confidence=None`` and one warning per task.
    Every public method holds :attr:`lock`, so one scorer may be shared between threads.
    Scoring never modifies the model's parameters or their ``requires_grad`` flags.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        spt_offset: int | None = None,
        layer_span: tuple[int, int] | None = None,
        model_name: str | None = None,
        profile: Profile | str | os.PathLike[str] | None = None,
        strict: bool = True,
        task: str | None = None,
    ) -> None:
        if not isinstance(model, GenerationMixin) or model.get_output_embeddings() is None:
            raise UnsupportedModelError(
                f"{type(model).__name__} is not a causal language model with an LM head; load the model with "
                "AutoModelForCausalLM (or gradguard.load_model)"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        self.lock = threading.RLock()
        n_layers = len(decoder_layers(model))
        if spt_offset is not None and spt_offset >= 0:
            raise InputError(
                f"spt_offset {spt_offset} must be negative (an offset from the end of the prompt, e.g. -2)"
            )
        self.profile = self._choose_profile(profile, spt_offset, layer_span, strict)
        start, stop = layer_span or self.profile.resolved_layer_span(n_layers)
        if not (0 <= start < stop <= n_layers):
            raise InputError(
                f"layer_span {(start, stop)} is not a range inside [0, {n_layers}); "
                f"pass (start, stop) with 0 <= start < stop <= {n_layers}"
            )
        self.layer_span = (int(start), int(stop))
        self.spt_offset = int(spt_offset if spt_offset is not None else self.profile.spt_offset)
        self._eot_ids = end_of_turn_ids(tokenizer, getattr(model.generation_config, "eos_token_id", None))
        #: Extra hidden-state layers kept on every result (``result.hidden``); the task's probe layers are
        #: read in any case (see :class:`~gradguard.result.HiddenStates`).
        self.hidden_layers: tuple[int, ...] = ()
        self._warned_tasks: set[str] = set()
        self.task = self._check_task(task if task is not None else self.profile.default_task)

    def _choose_profile(
        self,
        profile: Profile | str | os.PathLike[str] | None,
        spt_offset: int | None,
        layer_span: tuple[int, int] | None,
        strict: bool,
    ) -> Profile:
        """The explicit profile, else the one found for the model; with an explicit ``spt_offset`` and no
        explicit profile, the lookup is only a search for a matching calibration: when it fails in any way
        (no profile, or one measured on a different model: :class:`ProfileMismatchError`), the scorer runs
        on :func:`manual_profile` (uncalibrated, ``confidence`` None) instead of raising.
        """
        if profile is not None or spt_offset is None:
            return resolve_profile(self.model, self.tokenizer, model_id=self.model_name, profile=profile, strict=strict)
        try:
            with warnings.catch_warnings():  # only a look for a matching calibration; the caller chose the offset
                warnings.simplefilter("ignore", ProfileWarning)
                found = resolve_profile(self.model, self.tokenizer, model_id=self.model_name, strict=strict)
        except ProfileError:  # not found, mismatch (dims, model type, chat template), unreadable
            found = None
        if (
            found is not None
            and found.spt_offset == spt_offset
            and (layer_span is None or found.layer_span == layer_span)
        ):
            return found
        return manual_profile(self.model, spt_offset, layer_span)

    def _check_task(self, task: str) -> str:
        name = check_task_name(task)
        if name not in BUILTIN_TASKS and name not in self.profile.calibrations:
            raise UnknownTaskError(
                f"unknown task {name!r}: it is not built in ({sorted(BUILTIN_TASKS)}) and profile "
                f"{self.profile.name!r} "
                f"has no calibration for it (calibrated: {sorted(self.profile.calibrations) or 'none'}); calibrate it "
                f"with `gradguard calibrate --task {name} --prompt-template FILE --data QA.jsonl`"
            )
        return name

    def calibration_for(self, task: str | None = None) -> TaskCalibration | None:
        """The calibration that applies to ``task`` at this scorer's settings, or None (with one warning per task)."""
        name = self._check_task(task) if task is not None else self.task
        cal = self.profile.calibrations.get(name)
        reason = None
        if cal is None:
            reason = (
                f"profile {self.profile.name!r} has no calibration for task {name!r}, so confidence is None; "
                f"calibrate it with `gradguard calibrate --task {name} --data QA.jsonl --out PROFILE.json`"
            )
        elif not cal.applies_to(self.spt_offset, self.layer_span):
            reason = (
                f"the {name!r} calibration of profile {self.profile.name!r} was fitted at spt_offset="
                f"{cal.data.spt_offset}, layer_span={tuple(cal.data.layer_span)}, but this scorer uses spt_offset="
                f"{self.spt_offset}, layer_span={self.layer_span}; confidence is None (recalibrate with these settings)"
            )
            cal = None
        if reason is not None and name not in self._warned_tasks:
            self._warned_tasks.add(name)
            warnings.warn(reason, ProfileWarning, stacklevel=3)
        return cal

    @property
    def calibrated(self) -> bool:
        """True when results of the scorer's task carry a calibrated ``confidence``."""
        cal = self.profile.calibrations.get(self.task)
        return cal is not None and cal.applies_to(self.spt_offset, self.layer_span)

    def _layers_for(self, cal: TaskCalibration | None) -> tuple[int, ...]:
        wanted = set(self.hidden_layers)
        if cal is not None:
            wanted.update(required_layers(cal.calibrator, cal.domain))
        return tuple(sorted(wanted))

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike[str] | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        spt_offset: int | None = None,
        layer_span: tuple[int, int] | None = None,
        profile: Profile | str | os.PathLike[str] | None = None,
        strict: bool = True,
        task: str | None = None,
        device: str | torch.device | None = None,
    ) -> GradScorer:
        """Load a model (Hub id, folder, ``.gguf`` file, or ``None`` for the embedded default) and wrap it.

        ``device``: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...; ``"auto"``: the first GPU when
        torch sees one, else the CPU; ``None``: where the loader put it, the CPU). Scoring follows the model.
        """
        target = resolve_device(device)
        model, tokenizer, name = load_model(source, dtype=dtype)
        if target is not None:
            model.to(target)  # type: ignore[arg-type]  # transformers types .to's argument as a model
        return cls(
            model,
            tokenizer,
            spt_offset=spt_offset,
            layer_span=layer_span,
            model_name=name,
            profile=profile,
            strict=strict,
            task=task,
        )

    @property
    def context_window(self) -> int:
        """The model's maximum sequence length in tokens."""
        cfg = self.model.config.get_text_config()
        return int(getattr(cfg, "max_position_embeddings", None) or self.tokenizer.model_max_length)

    def prompt_ids(self, messages: Messages, tools: Tools | None = None) -> list[int]:
        """Token ids of ``messages`` (and ``tools``) in the model's chat template, generation prompt included."""
        return template_prompt(self.tokenizer, messages, tools)

    def _spt_position(self, prompt_ids: Sequence[int]) -> int:
        position = len(prompt_ids) + self.spt_offset
        if position < 0:
            raise InputError(
                f"the prompt has {len(prompt_ids)} tokens, fewer than the offset {self.spt_offset} reaches back; "
                "pass a longer prompt or a smaller |spt_offset|"
            )
        return position

    def _check_length(self, n_prompt: int, n_response: int) -> None:
        limit = self.context_window
        if n_prompt + n_response > limit:
            raise ContextLengthError(
                f"prompt ({n_prompt} tokens) plus response ({n_response} tokens) exceed the model's context window "
                f"of {limit} tokens; shorten the prompt (e.g. retrieve fewer documents) — nothing is truncated silently"
            )

    def _result(
        self,
        raw: RawScores | None,
        prompt_ids: Sequence[int],
        response_ids: Sequence[int],
        score_s: float,
        generate_s: float | None = None,
        text: str | None = None,
        task: str | None = None,
        cal: TaskCalibration | None = None,
        finish_reason: FinishReason | None = None,
        top_logprobs: int = 0,
        span: tuple[int, int] | None = None,
        like: ScoreResult | None = None,
    ) -> ScoreResult:
        """The result for ``raw``; ``like``: take the per-token arrays from this result (a part's parent)."""
        scores = combine_scores(raw) if raw is not None else _NAN_SCORES
        logprobs = tuple(-x for x in raw.nll) if raw is not None else ()
        entropies = tuple(raw.entropy) if raw is not None else ()
        top = None
        if top_logprobs:
            top = raw.top_logprobs if raw is not None and raw.top_logprobs is not None else []
        texts = token_pieces(self.tokenizer, response_ids) if raw is not None and like is None else ()
        if like is not None:
            logprobs, entropies, top = like.token_logprobs, like.token_entropies, like.top_logprobs
            texts = like.token_texts
        result = ScoreResult(
            **scores,
            n_response_tokens=len(response_ids),
            n_prompt_tokens=len(prompt_ids),
            spt_offset=self.spt_offset,
            spt_position=len(prompt_ids) + self.spt_offset,
            layer_span=self.layer_span,
            timings=Timings(generate_s=generate_s, score_s=score_s),
            response=text if text is not None else self.tokenizer.decode(list(response_ids), skip_special_tokens=True),
            empty=raw is None,
            token_ids=tuple(int(i) for i in response_ids),
            token_logprobs=logprobs,
            token_entropies=entropies,
            token_texts=texts,
            span=span,
            hidden=raw.hidden if raw is not None else None,
            model=self.model_name,
            profile=self.profile.name,
            task=task or self.task,
            finish_reason=finish_reason,
            top_logprobs=top,
        )
        update: dict[str, Any] = {}
        if cal is not None:
            pred = predict(cal.calibrator, cal.domain, result)
            if pred.confidence is not None:
                update.update(
                    confidence=pred.confidence,
                    calibrator=cal.calibrator.kind,
                    calibration=CalibrationInfo(
                        task=cal.task.name,
                        data=cal.data.file,
                        sha256=cal.data.sha256,
                        n=cal.n,
                        judge=cal.data.judge,
                        cv_auroc=cal.cv.auroc,
                    ),
                    in_domain=pred.in_domain,
                    domain_distance=pred.distance,
                    domain_percentile=pred.percentile,
                )
        if not self.hidden_layers:
            update["hidden"] = None  # the probe has read them; keep results small
        return result.model_copy(update=update) if update else result

    def score(
        self,
        messages: Messages,
        response: str | Sequence[int],
        *,
        task: str | None = None,
        top_logprobs: int = 0,
        tools: Tools | None = None,
        prefill: str = "",
        spans: SpanFn | None = None,
    ) -> ScoreResult:
        """Score ``response`` (text or token ids) as the answer to ``messages`` (teacher-forced).

        A trailing end-of-turn token in the response is stripped once. A response that is
        empty after tokenization gives a result with ``empty=True`` and NaN scores.
        ``task`` chooses the calibration (default: the scorer's task). ``top_logprobs=k``
        (0–20) fills ``result.top_logprobs`` with the ``k`` most likely tokens at each position,
        from the same scoring pass.

        ``tools``, ``prefill`` and ``spans`` act as in :meth:`generate_and_score`; a ``prefill`` must be the
        start of ``response`` (it is teacher-forced, not scored).
        """
        return self.score_many(
            messages, [response], task=task, top_logprobs=top_logprobs, tools=tools, prefill=prefill, spans=spans
        )[0]

    def score_many(
        self,
        messages: Messages,
        responses: Sequence[str | Sequence[int]],
        *,
        task: str | None = None,
        top_logprobs: int = 0,
        tools: Tools | None = None,
        prefill: str = "",
        spans: SpanFn | None = None,
    ) -> list[ScoreResult]:
        """Score several responses to the same ``messages`` in one batch (same results as one by one)."""
        if isinstance(responses, str):
            raise InputError("score_many takes a list of responses; for one response use score()")
        top_k = _check_top_logprobs(top_logprobs)
        with self.lock:
            name = self._check_task(task) if task is not None else self.task
            prompt = self.prompt_ids(messages, tools)
            position = self._spt_position(prompt)
            ids = [tokenize_response(self.tokenizer, r, self._eot_ids) for r in responses]
            n_prefill = len(self._prefill_ids(prefill))
            for i, r in enumerate(ids):
                self._check_length(len(prompt), len(r))
                if prefill and r[:n_prefill] != self._prefill_ids(prefill):
                    raise InputError(
                        f"response {i} does not start with the prefill {prefill!r}; pass the whole answer, prefill "
                        "included, or prefill=''"
                    )
            results = self._score_ids(
                prompt, position, ids, cache=None, task=name, top_logprobs=top_k, n_prefill=n_prefill, spans=spans
            )
        return with_messages(results, messages)

    def _prefill_ids(self, prefill: str) -> list[int]:
        if not isinstance(prefill, str):
            raise InputError(f"prefill={prefill!r} is not a string; pass the text the answer must start with")
        return [int(i) for i in self.tokenizer(prefill, add_special_tokens=False)["input_ids"]] if prefill else []

    def _plan(self, ids: list[int], n_prefill: int, spans: SpanFn | None) -> SpanPlan:
        """The checked span plan of one answer (``main`` always set)."""
        plan = spans(list(ids)) if spans is not None else SpanPlan()
        main = plan.main if plan.main is not None else (n_prefill, len(ids))
        if main[1] != len(ids) or not 0 <= main[0] <= main[1]:
            raise InputError(
                f"span plan main={plan.main!r} must be a range (a, {len(ids)}) ending at the answer's last token"
            )
        bad = [p for p in plan.parts if not 0 <= p[0] < p[1] <= len(ids)]
        if bad:
            raise InputError(
                f"span plan parts {bad} are not non-empty token ranges inside [0, {len(ids)}); "
                "map character offsets to tokens with gradguard.prompting.token_span"
            )
        return SpanPlan((int(main[0]), int(main[1])), [(int(a), int(b)) for a, b in plan.parts])

    @staticmethod
    def _rows_of(ids: Sequence[Sequence[int]], plans: Sequence[SpanPlan]) -> list[tuple[int, tuple[int, int], bool]]:
        """The scoring rows ``(answer index, window, full statistics)``: one per answer (its main range) plus one
        per part; an answer with an empty main range gets none."""
        rows: list[tuple[int, tuple[int, int], bool]] = []
        for i, (r, plan) in enumerate(zip(ids, plans, strict=True)):
            main = plan.main or (0, len(r))
            if main[0] < main[1]:
                rows.append((i, main, True))
                rows.extend((i, part, False) for part in plan.parts)
        return rows

    def _assemble(
        self,
        prompt: Sequence[int],
        ids: Sequence[Sequence[int]],
        plans: Sequence[SpanPlan],
        rows: Sequence[tuple[int, tuple[int, int], bool]],
        raws: Sequence[RawScores],
        *,
        name: str,
        cal: TaskCalibration | None,
        finish_reasons: Sequence[FinishReason | None] | None,
        top_logprobs: int,
        generate_s: float | None,
    ) -> list[ScoreResult]:
        """The results of ``ids`` from their rows' raw scores (timings still to be set)."""
        by_answer: dict[int, list[RawScores]] = {}
        for (i, _, _), raw in zip(rows, raws, strict=True):
            by_answer.setdefault(i, []).append(raw)
        reasons = list(finish_reasons) if finish_reasons is not None else [None] * len(ids)
        results = []
        for i, r in enumerate(ids):
            found = by_answer.get(i, [])
            main_raw = found[0] if found else None
            main = plans[i].main or (0, len(r))
            common: dict[str, Any] = dict(task=name, cal=cal, finish_reason=reasons[i], top_logprobs=top_logprobs)
            result = self._result(main_raw, prompt, r, 0.0, generate_s, span=None if main == (0, len(r)) else main,
                                  **common)  # fmt: skip
            parts = tuple(
                self._result(raw, prompt, r, 0.0, generate_s, span=raw.window, like=result, **common)
                for raw in found[1:]
            )
            results.append(result.model_copy(update={"parts": parts}) if parts else result)
        return results

    @staticmethod
    def _timed(
        results: Sequence[ScoreResult], generate_s: float | None, score_s: float, reused: bool = False
    ) -> list[ScoreResult]:
        timings = Timings(generate_s=generate_s, score_s=score_s, score_path="reuse" if reused else "exact")
        return [
            r.model_copy(
                update={"timings": timings, "parts": tuple(p.model_copy(update={"timings": timings}) for p in r.parts)}
            )
            for r in results
        ]

    def _score_ids(
        self,
        prompt: list[int],
        position: int,
        ids: list[list[int]],
        cache: DynamicCache | None,
        generate_s: float | None = None,
        task: str | None = None,
        finish_reasons: Sequence[FinishReason | None] | None = None,
        top_logprobs: int = 0,
        n_prefill: int = 0,
        spans: SpanFn | None = None,
        states: GenerationStates | None = None,
    ) -> list[ScoreResult]:
        """Score the answers ``ids`` to ``prompt``; with trusted ``states`` (saved while generating ``ids``, row ``i``
        = answer ``i``) on the reuse path, else on the exact path (reusing ``cache``'s prefix when it lines up)."""
        name = task or self.task
        cal = self.calibration_for(name)
        started = time.perf_counter()
        plans = [self._plan(r, n_prefill, spans) for r in ids]
        rows = self._rows_of(ids, plans)
        raws: list[RawScores] = []
        reused = bool(rows) and states is not None and states.trusted
        if reused:
            assert states is not None
            raws = reused_scores(
                self.model,
                states,
                [ReuseRow(i, prompt, position, ids[i], n_prefill, w, f) for i, w, f in rows],
                self.layer_span,
                hidden_layers=self._layers_for(cal),
                top_logprobs=top_logprobs,
            )
        elif rows:
            if states is not None and states.reason:
                logger.debug("scoring on the exact path: %s", states.reason)
            if cache is not None and len(ids) > 1 and len(rows) != len(ids):
                cache = None  # a batched cache no longer lines up with the rows; rebuild the prefix
            raws = fast_scores(
                self.model,
                prompt,
                [ids[i] for i, _, _ in rows],
                position,
                self.layer_span,
                cache=cache,
                hidden_layers=self._layers_for(cal),
                top_logprobs=top_logprobs,
                windows=[w for _, w, _ in rows],
                full_stats=[f for _, _, f in rows],
            )
        results = self._assemble(
            prompt, ids, plans, rows, raws, name=name, cal=cal, finish_reasons=finish_reasons,
            top_logprobs=top_logprobs, generate_s=generate_s,
        )  # fmt: skip
        elapsed = (time.perf_counter() - started) / max(1, len(ids))
        return self._timed(results, generate_s, elapsed, reused)

    def _capture(
        self, tasks: Sequence[str], first_col: int, input_width: int, batch: int, kwargs: dict[str, Any]
    ) -> GenerationCapture | None:
        """Hooks saving what the scoring of answers generated under ``kwargs`` can reuse (the inputs of the first
        SemGrad layer and of the probe layers below it that ``tasks``' calibrations read); None when those settings
        make saved states untrustworthy (beam search, assisted decoding, ...: the exact path then scores)."""
        reason = untrusted_settings(self.model, kwargs)
        if reason is not None:
            logger.debug("not saving generation states: %s", reason)
            return None
        start = self.layer_span[0]
        lower = {i for task in tasks for i in self._layers_for(self.calibration_for(task)) if i < start}
        return GenerationCapture(self.model, [start, *sorted(lower)], first_col, input_width, batch)

    def _score_requests(self, items: Sequence[ScoreRequest]) -> list[list[ScoreResult] | GradguardError]:
        """Score the answers of several requests (different prompts) in one batched pass per set of hidden layers.

        Each item's results equal :meth:`_score_ids` on it alone (``cache=None``), up to float error from
        padding; ``score_s`` is the batched work's time divided by the number of answers. An item whose
        planning fails (a failing ``spans`` function, say) gets its error; the others are scored. An error
        of the batched pass itself is raised (the caller may then score the items one by one).
        """
        started = time.perf_counter()
        out: list[list[ScoreResult] | GradguardError | None] = [None] * len(items)
        planned: list[tuple[int, str, TaskCalibration | None, list[SpanPlan], list[tuple[int, tuple[int, int], bool]]]]
        planned = []
        for j, item in enumerate(items):
            try:
                name = item.task or self.task
                cal = self.calibration_for(name)
                plans = [self._plan(r, item.n_prefill, item.spans) for r in item.ids]
                planned.append((j, name, cal, plans, self._rows_of(item.ids, plans)))
            except Exception as exc:  # noqa: BLE001 - this item fails alone
                out[j] = exc if isinstance(exc, GradguardError) else _wrapped(exc, "scoring failed")
        # One pass per set of hidden layers, and per generation whose saved states the answers reuse.
        groups: dict[tuple[tuple[int, ...], int | None], list[int]] = {}
        for k, (j, _, cal, _, _) in enumerate(planned):
            reuse = items[j].reuse
            key = id(reuse[0]) if reuse is not None and reuse[0].trusted else None
            groups.setdefault((self._layers_for(cal), key), []).append(k)
        raws_of: dict[int, list[RawScores]] = {}
        reused: set[int] = set()
        for (layers, key), members in groups.items():
            batch: list[ScoreRow] = []
            again: list[ReuseRow] = []
            owners: list[int] = []
            for k in members:
                j, _, _, _, rows = planned[k]
                item = items[j]
                for i, window, full in rows:
                    if key is not None and item.reuse is not None:
                        again.append(ReuseRow(item.reuse[1], item.prompt, item.position, item.ids[i], item.n_prefill,
                                              window, full))  # fmt: skip
                    else:
                        batch.append(ScoreRow(item.prompt, item.position, item.ids[i], window, full))
                    owners.append(k)
            top_k = max((items[planned[k][0]].top_logprobs for k in members), default=0)
            if again:
                states = items[planned[members[0]][0]].reuse
                assert states is not None
                raws = reused_scores(
                    self.model, states[0], again, self.layer_span, hidden_layers=layers, top_logprobs=top_k
                )
                reused.update(planned[k][0] for k in members)
            elif batch:
                raws = fast_scores_rows(self.model, batch, self.layer_span, hidden_layers=layers, top_logprobs=top_k)
            else:
                raws = []
            for k, raw in zip(owners, raws, strict=True):
                want = items[planned[k][0]].top_logprobs
                if raw.top_logprobs is not None:
                    trimmed = [t[:want] for t in raw.top_logprobs] if want else None
                    raw = dataclasses.replace(raw, top_logprobs=trimmed)
                raws_of.setdefault(k, []).append(raw)
        assembled: list[tuple[int, list[ScoreResult]]] = []
        n_answers = 0
        for k, (j, name, cal, plans, rows) in enumerate(planned):
            item = items[j]
            try:
                results = self._assemble(
                    item.prompt, item.ids, plans, rows, raws_of.get(k, []), name=name, cal=cal,
                    finish_reasons=item.finish_reasons, top_logprobs=item.top_logprobs, generate_s=item.generate_s,
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - this item fails alone
                out[j] = exc if isinstance(exc, GradguardError) else _wrapped(exc, "scoring failed")
                continue
            assembled.append((j, results))
            n_answers += len(item.ids)
        elapsed = (time.perf_counter() - started) / max(1, n_answers)
        for j, results in assembled:
            out[j] = self._timed(results, items[j].generate_s, elapsed, j in reused)
        return [r if r is not None else GradguardError(f"item {j} was not scored") for j, r in enumerate(out)]

    def generate_and_score(
        self,
        messages: Messages,
        *,
        max_new_tokens: int = 256,
        streamer: Any = None,
        task: str | None = None,
        stop: Sequence[str] = (),
        top_logprobs: int = 0,
        cancel: threading.Event | None = None,
        tools: Tools | None = None,
        prefill: str = "",
        spans: SpanFn | None = None,
        **generate_kwargs: Any,
    ) -> ScoreResult:
        """Generate an answer to ``messages`` (greedy unless told otherwise) and score it.

        Scoring reuses the generation's KV cache, cropped at the semantic-preserving token,
        so its cost does not grow with the prompt: one generation and one scoring pass per answer.
        ``result.response`` is the answer text (end-of-turn token stripped);
        ``result.timings.generate_s`` the generation time; ``result.finish_reason`` is ``"length"``
        when ``max_new_tokens`` ran out before an end-of-turn token or a stop string, else ``"stop"``
        (also when generation ended for another reason: ``max_time``, your stopping criteria).

        ``stop``: stop strings (a single string counts as one; empty ones are ignored). Generation
        ends at the first one, and the answer keeps only the tokens *before* the first token whose
        text overlaps its first occurrence: exactly those tokens are scored, and
        ``result.response`` is their decoded text. A token that straddles the stop string is
        dropped with it, so the response may end a little before the stop string.

        ``top_logprobs=k`` (0–20) fills ``result.top_logprobs`` with the ``k`` most likely tokens
        at each answer position, from the scoring pass (no extra forward pass).

        ``cancel``: an event that stops generation at the next token when set; if it is set when
        generation ends (or before it starts), nothing is scored and :class:`GenerationCancelled`
        is raised, so :attr:`lock` is released at once.

        ``tools``: tool schemas (OpenAI format) rendered by the model's chat template.
        ``prefill``: text the answer is made to start with (e.g. a tool-call opening that enforces a call):
        it is appended after the generation prompt, generation continues it, and the answer
        (``result.token_ids``, ``result.response``) includes it; the semantic-preserving offset is taken on
        the prompt without it, and its tokens are teacher-forced but not scored (``result.span`` starts after it).
        ``spans``: maps the answer's token ids to a :class:`SpanPlan`: the message-level range (e.g. after a
        ``<think>`` section) and the parts scored on their own into ``result.parts`` (e.g. one per tool call),
        all in the one batched scoring pass.
        """
        return self.generate_many(
            messages,
            1,
            max_new_tokens=max_new_tokens,
            streamer=streamer,
            task=task,
            stop=stop,
            top_logprobs=top_logprobs,
            cancel=cancel,
            tools=tools,
            prefill=prefill,
            spans=spans,
            **generate_kwargs,
        )[0]

    async def ascore(
        self,
        messages: Messages,
        response: str | Sequence[int],
        *,
        task: str | None = None,
        top_logprobs: int = 0,
        tools: Tools | None = None,
        prefill: str = "",
        spans: SpanFn | None = None,
    ) -> ScoreResult:
        """:meth:`score` in a worker thread, for asyncio code: the event loop is not blocked while the model runs.

        Every score on the result is an uncertainty — larger means the model is less confident in ``response``.
        The arguments act as in :meth:`score`; calls from many tasks take turns on :attr:`lock`.
        """
        return await asyncio.to_thread(
            self.score,
            messages,
            response,
            task=task,
            top_logprobs=top_logprobs,
            tools=tools,
            prefill=prefill,
            spans=spans,
        )

    async def agenerate_and_score(
        self,
        messages: Messages,
        *,
        max_new_tokens: int = 256,
        streamer: Any = None,
        task: str | None = None,
        stop: Sequence[str] = (),
        top_logprobs: int = 0,
        cancel: threading.Event | None = None,
        tools: Tools | None = None,
        prefill: str = "",
        spans: SpanFn | None = None,
        **generate_kwargs: Any,
    ) -> ScoreResult:
        """:meth:`generate_and_score` in a worker thread, for asyncio code; cancelling the awaiting task stops it.

        Every score on the result is an uncertainty — larger means the model is less confident in its answer.
        The arguments act as in :meth:`generate_and_score`. When the task awaiting this call is cancelled,
        ``cancel`` (an event made here if none is given) is set, generation stops at the next token, nothing
        is scored, and :class:`asyncio.CancelledError` is raised once the worker thread has let go of
        :attr:`lock`.
        """
        event = cancel if cancel is not None else threading.Event()
        work = asyncio.ensure_future(
            asyncio.to_thread(
                self.generate_and_score,
                messages,
                max_new_tokens=max_new_tokens,
                streamer=streamer,
                task=task,
                stop=stop,
                top_logprobs=top_logprobs,
                cancel=event,
                tools=tools,
                prefill=prefill,
                spans=spans,
                **generate_kwargs,
            )
        )
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            event.set()  # generation stops at the next token
            try:
                await work  # the thread ends promptly and frees the lock
            except BaseException:  # noqa: BLE001, S110 - GenerationCancelled (or a second cancel): the task is cancelled
                pass
            raise

    def generate_many(
        self,
        messages: Messages,
        n: int,
        *,
        max_new_tokens: int = 256,
        streamer: Any = None,
        task: str | None = None,
        stop: Sequence[str] = (),
        top_logprobs: int = 0,
        cancel: threading.Event | None = None,
        tools: Tools | None = None,
        prefill: str = "",
        spans: SpanFn | None = None,
        **generate_kwargs: Any,
    ) -> list[ScoreResult]:
        """Generate ``n`` completions (pass ``do_sample=True`` for different ones) and score them in one batch.

        ``stop``, ``top_logprobs``, ``cancel``, ``tools``, ``prefill`` and ``spans`` act as in
        :meth:`generate_and_score`, per completion.
        """
        if n < 1:
            raise InputError(f"n={n}: ask for at least one completion")
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens={max_new_tokens}: must be at least 1")
        kwargs: dict[str, Any] = {"do_sample": False, **generate_kwargs}
        stops = _check_stop(stop, kwargs.pop("stop_strings", None))
        top_k = _check_top_logprobs(top_logprobs)
        criteria = StoppingCriteriaList(list(kwargs.pop("stopping_criteria", None) or ()))
        if cancel is not None:
            criteria.append(_CancelCriteria(cancel))
        with self.lock:
            name = self._check_task(task) if task is not None else self.task
            prompt = self.prompt_ids(messages, tools)
            position = self._spt_position(prompt)
            forced = self._prefill_ids(prefill)
            self._check_length(len(prompt), len(forced))
            max_new_tokens = min(max_new_tokens, self.context_window - len(prompt) - len(forced))
            if max_new_tokens < 1:
                raise ContextLengthError(
                    f"the prompt ({len(prompt)} tokens) fills the model's context window of {self.context_window} "
                    "tokens; shorten it — nothing is truncated silently"
                )
            if kwargs["do_sample"] is False:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            if stops:
                criteria.append(StopStringCriteria(tokenizer=self.tokenizer, stop_strings=list(stops)))
            kwargs.setdefault("tokenizer", self.tokenizer)  # for stop strings in the model's generation config
            pad_id = self.tokenizer.pad_token_id
            if pad_id is None:
                pad_id = next(iter(self._eot_ids), 0)
            if cancel is not None and cancel.is_set():
                if streamer is not None:
                    streamer.end()  # a consumer iterating the streamer must not wait for a generation that never starts
                raise GenerationCancelled("generation was cancelled before it started; nothing was generated or scored")
            input_ids = torch.tensor([prompt + forced], device=self.model.device)
            capture = self._capture([name], position, input_ids.shape[1], n, kwargs)
            started = time.perf_counter()
            with torch.no_grad(), capture if capture is not None else contextlib.nullcontext():
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=n,
                    return_dict_in_generate=True,
                    streamer=streamer,
                    pad_token_id=pad_id,
                    stopping_criteria=criteria,
                    **kwargs,
                )
            generate_s = time.perf_counter() - started
            if cancel is not None and cancel.is_set():
                del out
                raise GenerationCancelled("generation was cancelled; the answer was not scored")
            ids: list[list[int]] = []
            reasons: list[FinishReason] = []
            for row in out.sequences:
                generated = row[len(prompt) + len(forced) :].tolist()
                answer, ended = self._until_end_of_turn(generated)
                answer, stopped = self._before_stop(answer, stops)
                ids.append(forced + answer)
                reasons.append("length" if not (ended or stopped) and len(generated) >= max_new_tokens else "stop")
            # transformers >= 5.24 names it `cache`. Under settings whose states cannot be trusted (beam search
            # reorders the cache's rows) the exact path rebuilds the prefix instead.
            cache = out.cache if isinstance(out.cache, DynamicCache) and capture is not None else None
            del out
            states = None
            if capture is not None:
                states = capture.states(
                    cache, torch.ones((n, input_ids.shape[1]), dtype=torch.long, device=input_ids.device)
                )
            results = self._score_ids(
                prompt,
                position,
                ids,
                cache=cache,
                generate_s=generate_s,
                task=name,
                finish_reasons=reasons,
                top_logprobs=top_k,
                n_prefill=len(forced),
                spans=spans,
                states=states,
            )
        return with_messages(results, messages)

    def _until_end_of_turn(self, ids: list[int]) -> tuple[list[int], bool]:
        """``ids`` up to the first end-of-turn token, and whether there was one."""
        for i, token in enumerate(ids):
            if token in self._eot_ids:
                return ids[:i], True
        return ids, False

    def _before_stop(self, ids: list[int], stops: Sequence[str]) -> tuple[list[int], bool]:
        """The tokens before the first one whose text overlaps the first stop string in ``ids``' text, and whether
        a stop string occurred. Kept are the most tokens whose decoded text is a prefix of the whole text that
        ends at or before the stop string (a token straddling it, or a character split across tokens there, is dropped).
        """
        if not stops or not ids:
            return ids, False
        text = str(self.tokenizer.decode(ids, skip_special_tokens=True))
        hits = [i for i in (text.find(s) for s in stops) if i >= 0]
        if not hits:
            return ids, False
        limit = min(hits)
        n = len(ids)
        while n > 0:
            prefix = str(self.tokenizer.decode(ids[:n], skip_special_tokens=True))
            if len(prefix) <= limit and text.startswith(prefix):
                break
            n -= 1
        return ids[:n], True

    def oracle(
        self,
        messages: Messages,
        response: str | Sequence[int],
        *,
        tools: Tools | None = None,
        window: tuple[int, int] | None = None,
    ) -> ScoreResult:
        """The same scores by the straightforward computation (slow; for tests and benchmarks; no confidence).

        ``window = (a, b)`` restricts the loss to response tokens ``a … b−1`` (a prefill or a tool call's span);
        the result's per-token arrays then cover the window only.
        """
        with self.lock:
            prompt = self.prompt_ids(messages, tools)
            position = self._spt_position(prompt)
            ids = tokenize_response(self.tokenizer, response, self._eot_ids)
            self._check_length(len(prompt), len(ids))
            started = time.perf_counter()
            raw = oracle_scores(self.model, prompt, ids, position, self.layer_span, window) if ids else None
            return self._result(raw, prompt, ids, time.perf_counter() - started)
