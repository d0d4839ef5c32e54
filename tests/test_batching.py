"""Micro-batched generation (gradguard.batching): rows behave as alone, scores do not depend on the batch."""

from __future__ import annotations

import concurrent.futures
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from gradguard import GradScorer
from gradguard.batching import GenerationRequest, MicroBatcher, generate_batch
from gradguard.errors import ContextLengthError, GenerationCancelled, GradguardError, InputError, QueueFullError
from gradguard.result import ScoreResult
from gradguard.scorer import SpanPlan
from gradguard.testing import make_tiny_model

WAIT = 60.0  # seconds: only against hangs, never a performance assert
KEYS = ("hybridgrad", "semgrad", "paragrad", "exgrad", "mean_nll")
PROMPTS = ["Tell me a story about a cat.", "What is 2 + 2?", "Name three colours, please, and say why you like them."]


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def scorer() -> GradScorer:
    model, tok = make_tiny_model("qwen2")
    return GradScorer(model, tok, model_name="tiny-qwen2")


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has no calibration.*")
        warnings.filterwarnings("ignore", message=".*lands on.*")
        yield


def ok(entry: ScoreResult | GradguardError) -> ScoreResult:
    assert isinstance(entry, ScoreResult), entry
    return entry


def assert_scores_as_alone(scorer: GradScorer, result: ScoreResult, request: GenerationRequest) -> None:
    alone = scorer.score(
        request.messages,
        list(result.token_ids),
        task=request.task,
        tools=request.tools,
        prefill=request.prefill,
        spans=request.spans,
        top_logprobs=request.top_logprobs,
    )
    assert alone.token_ids == result.token_ids and alone.response == result.response
    for key in KEYS:
        assert getattr(result, key) == pytest.approx(getattr(alone, key), rel=1e-4), key
    assert result.n_response_tokens == len(result.token_ids)


def _stop_char_in(text: str, skip: bool = True) -> str:
    """A printable ASCII character first occurring a few characters into ``text`` (one byte-level token)."""
    for i, ch in enumerate(text):
        if i >= 3 and ch.isascii() and ch.isprintable() and not ch.isspace() and ch not in text[:i]:
            return ch
    if skip:
        pytest.skip(f"no usable stop character in {text!r}")
    return ""


class Recorder:
    """A transformers-like streamer that records what it is given."""

    def __init__(self, on_token: Any = None) -> None:
        self.prompt: list[int] | None = None
        self.tokens: list[int] = []
        self.ends = 0
        self.on_token = on_token

    def put(self, value: torch.Tensor) -> None:
        assert self.ends == 0, "put() after end()"
        if self.prompt is None:
            assert value.dim() == 2 and value.shape[0] == 1
            self.prompt = value[0].tolist()
            return
        assert value.shape == (1,)
        self.tokens.extend(value.tolist())
        if self.on_token is not None:
            self.on_token(self)

    def end(self) -> None:
        self.ends += 1


def test_batched_rows_score_as_alone_and_generate_as_alone(tiny_scorer: GradScorer) -> None:
    scorer = tiny_scorer
    plain = scorer.generate_and_score(ask(PROMPTS[2]), max_new_tokens=24)
    stop = _stop_char_in(plain.response, skip=False)  # "" (no stop string) when the tiny model's text has none
    requests = [
        GenerationRequest(messages=ask(PROMPTS[0]), max_new_tokens=9),
        GenerationRequest(messages=ask(PROMPTS[1]), max_new_tokens=17, top_logprobs=2),
        GenerationRequest(messages=ask(PROMPTS[2]), max_new_tokens=24, stop=(stop, "never-there")),
    ]
    results = [ok(r) for r in generate_batch(scorer, requests)]
    for request, result in zip(requests, results, strict=True):
        assert_scores_as_alone(scorer, result, request)
        # Greedy fp32 decoding gives the same tokens left-padded in a batch as alone (it holds for every tiny family).
        alone = scorer.generate_and_score(
            request.messages,
            max_new_tokens=request.max_new_tokens,
            stop=request.stop,
            top_logprobs=request.top_logprobs,
        )
        assert result.token_ids == alone.token_ids
        assert result.finish_reason == alone.finish_reason
        assert result.n_response_tokens <= request.max_new_tokens
        for key in KEYS:  # alone, the scores come from the generation's cache: equal within float noise
            assert getattr(result, key) == pytest.approx(getattr(alone, key), rel=1e-4, nan_ok=True), key
    assert results[1].top_logprobs is not None and len(results[1].top_logprobs) == results[1].n_response_tokens
    if stop:
        assert results[2].finish_reason == "stop" and stop not in results[2].response
        assert plain.response.startswith(results[2].response)
    generate_s = {r.timings.generate_s for r in results}
    assert len(generate_s) == 1 and None not in generate_s  # one generation call for the three


def test_a_stop_string_only_stops_its_own_row(scorer: GradScorer) -> None:
    plain = scorer.generate_and_score(ask(PROMPTS[0]), max_new_tokens=30)
    stop = _stop_char_in(plain.response)
    requests = [
        GenerationRequest(messages=ask(PROMPTS[0]), max_new_tokens=30),
        GenerationRequest(messages=ask(PROMPTS[0]), max_new_tokens=30, stop=stop),  # a single string is one stop
        GenerationRequest(messages=ask(PROMPTS[1]), max_new_tokens=30),
    ]
    assert requests[1].stop == (stop,)
    full, cut, other = (ok(r) for r in generate_batch(scorer, requests))
    assert full.token_ids == plain.token_ids and full.finish_reason == "length"
    assert cut.finish_reason == "stop" and 0 < len(cut.token_ids) < len(full.token_ids)
    assert full.token_ids[: len(cut.token_ids)] == cut.token_ids and stop not in cut.response
    assert full.response[len(cut.response) :].startswith(stop)
    assert other.n_response_tokens == 30 and other.finish_reason == "length"
    assert_scores_as_alone(scorer, cut, requests[1])


def test_end_of_turn_ends_one_row(scorer: GradScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import LogitsProcessorList

    eot = next(iter(scorer._eot_ids))
    original = scorer.model.generate
    width: list[int] = []

    class EndRowZero:  # makes row 0's third token the end-of-turn token
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if input_ids.shape[1] - width[0] == 2:
                scores = scores.clone()
                scores[0] = -1e9
                scores[0, eot] = 0.0
            return scores

    def generate(*args: Any, **kwargs: Any) -> Any:
        width.append(kwargs["input_ids"].shape[1])
        return original(*args, logits_processor=LogitsProcessorList([EndRowZero()]), **kwargs)

    monkeypatch.setattr(scorer.model, "generate", generate)
    requests = [GenerationRequest(messages=ask(p), max_new_tokens=12) for p in PROMPTS[:2]]
    streamers = [Recorder(), Recorder()]
    ended, going = (ok(r) for r in generate_batch(scorer, requests, streamers=streamers))
    assert ended.finish_reason == "stop" and ended.n_response_tokens == 2
    assert streamers[0].tokens == [*ended.token_ids, eot]  # streamed as transformers does: end-of-turn token included
    assert going.finish_reason == "length" and going.n_response_tokens == 12
    assert streamers[1].tokens == list(going.token_ids)
    assert_scores_as_alone(scorer, ended, requests[0])


def test_context_window_caps_a_row_alone(scorer: GradScorer) -> None:
    n_prompt = len(scorer.prompt_ids(ask("")))
    long_text = "a" * (scorer.context_window - n_prompt - 5)  # byte-level tokens: one per character
    assert len(scorer.prompt_ids(ask(long_text))) == scorer.context_window - 5
    requests = [
        GenerationRequest(messages=ask(long_text), max_new_tokens=50),
        GenerationRequest(messages=ask(PROMPTS[1]), max_new_tokens=20),
    ]
    capped, short = (ok(r) for r in generate_batch(scorer, requests))
    assert capped.n_response_tokens == 5 and capped.finish_reason == "length"
    assert short.n_response_tokens == 20
    assert_scores_as_alone(scorer, short, requests[1])


def test_a_bad_request_fails_alone(scorer: GradScorer) -> None:
    too_long = "b" * (scorer.context_window + 10)
    requests = [
        GenerationRequest(messages=ask(PROMPTS[0]), max_new_tokens=6),
        GenerationRequest(messages=ask(PROMPTS[0]), task="no-such-task"),
        GenerationRequest(messages=ask(too_long)),
        GenerationRequest(messages=[{"role": "wizard", "content": "hi"}]),
        GenerationRequest(messages=ask(PROMPTS[1]), max_new_tokens=6),
    ]
    streamers = [Recorder() for _ in requests]
    results = generate_batch(scorer, requests, streamers=streamers)
    first, last = ok(results[0]), ok(results[4])
    assert isinstance(results[1], InputError) and "no-such-task" in str(results[1])
    assert isinstance(results[2], ContextLengthError)
    assert isinstance(results[3], GradguardError)
    assert first.n_response_tokens == last.n_response_tokens == 6
    assert_scores_as_alone(scorer, first, requests[0])
    for i in (1, 2, 3):  # a request that never generates: its consumer is told at once
        assert streamers[i].ends == 1 and streamers[i].tokens == [] and streamers[i].prompt is None


def test_streamers_get_exactly_their_rows_tokens(scorer: GradScorer) -> None:
    prefill = "Sure"
    requests = [
        GenerationRequest(messages=ask(PROMPTS[0]), max_new_tokens=7, prefill=prefill),
        GenerationRequest(messages=ask(PROMPTS[2]), max_new_tokens=13),
    ]
    streamers = [Recorder(), Recorder()]
    a, b = (ok(r) for r in generate_batch(scorer, requests, streamers=streamers))
    forced = scorer._prefill_ids(prefill)
    assert streamers[0].prompt == scorer.prompt_ids(requests[0].messages) + forced
    assert streamers[1].prompt == scorer.prompt_ids(requests[1].messages)
    assert list(a.token_ids) == forced + streamers[0].tokens and len(streamers[0].tokens) == 7
    assert list(b.token_ids) == streamers[1].tokens and len(streamers[1].tokens) == 13
    assert [s.ends for s in streamers] == [1, 1]
    assert a.response.startswith(prefill)
    assert_scores_as_alone(scorer, a, requests[0])


def test_prefill_spans_and_tools_score_as_alone(scorer: GradScorer) -> None:
    tools = [{"type": "function", "function": {"name": "add", "description": "Add two numbers", "parameters": {}}}]

    def spans(ids: list[int]) -> SpanPlan:
        return SpanPlan(main=(2, len(ids)), parts=[(0, 3)])

    requests = [
        GenerationRequest(messages=ask(PROMPTS[1]), max_new_tokens=8, tools=tools, prefill="<tool_call>"),
        GenerationRequest(messages=ask(PROMPTS[0]), max_new_tokens=8, spans=spans),
    ]
    assert "spans" not in requests[1].model_dump()
    a, b = (ok(r) for r in generate_batch(scorer, requests))
    assert_scores_as_alone(scorer, a, requests[0])
    assert_scores_as_alone(scorer, b, requests[1])
    assert b.span == (2, 8) and len(b.parts) == 1
    alone = scorer.score(requests[1].messages, list(b.token_ids), spans=spans)
    assert b.parts[0].hybridgrad == pytest.approx(alone.parts[0].hybridgrad, rel=1e-4)


def test_a_failing_spans_function_fails_its_request_alone(scorer: GradScorer) -> None:
    def broken(ids: list[int]) -> SpanPlan:
        raise ValueError("boom")

    requests = [
        GenerationRequest(messages=ask(PROMPTS[0]), max_new_tokens=4, spans=broken),
        GenerationRequest(messages=ask(PROMPTS[1]), max_new_tokens=4),
    ]
    bad, good = generate_batch(scorer, requests)
    assert isinstance(bad, GradguardError) and "boom" in str(bad)
    assert ok(good).n_response_tokens == 4


def test_sampling_settings_split_the_batch(scorer: GradScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    original = scorer.model.generate
    calls: list[tuple[int, dict[str, Any]]] = []

    def generate(*args: Any, **kwargs: Any) -> Any:
        calls.append((kwargs["input_ids"].shape[0], {k: kwargs.get(k) for k in ("do_sample", "temperature", "top_k")}))
        return original(*args, **kwargs)

    monkeypatch.setattr(scorer.model, "generate", generate)
    requests = [
        GenerationRequest(messages=ask(PROMPTS[0]), max_new_tokens=5),
        GenerationRequest(messages=ask(PROMPTS[1]), max_new_tokens=5, do_sample=True, temperature=0.7, top_k=5),
        GenerationRequest(messages=ask(PROMPTS[2]), max_new_tokens=5, temperature=0.3),  # greedy: temperature unused
    ]
    torch.manual_seed(0)
    results = [ok(r) for r in generate_batch(scorer, requests)]
    assert sorted(n for n, _ in calls) == [1, 2]
    assert {(n, kw["do_sample"], kw["temperature"], kw["top_k"]) for n, kw in calls} == {
        (2, False, None, None),
        (1, True, 0.7, 5),
    }
    for request, result in zip(requests, results, strict=True):
        assert_scores_as_alone(scorer, result, request)


def test_cancel_stops_one_row(scorer: GradScorer) -> None:
    cancel = threading.Event()

    def cancel_after_three(rec: Recorder) -> None:
        if len(rec.tokens) == 3:
            cancel.set()

    requests = [GenerationRequest(messages=ask(p), max_new_tokens=40) for p in PROMPTS[:2]]
    requests.append(GenerationRequest(messages=ask(PROMPTS[2]), max_new_tokens=5))
    early = threading.Event()
    early.set()
    streamers = [Recorder(cancel_after_three), Recorder(), Recorder()]
    results = generate_batch(scorer, requests, streamers=streamers, cancels=[cancel, None, early])
    assert isinstance(results[0], GenerationCancelled)
    assert isinstance(results[2], GenerationCancelled)
    assert len(streamers[0].tokens) == 3 and streamers[0].ends == 1  # stopped at the token that saw the event
    assert streamers[2].tokens == [] and streamers[2].ends == 1
    kept = ok(results[1])
    assert kept.n_response_tokens == 40
    assert kept.token_ids == scorer.generate_and_score(requests[1].messages, max_new_tokens=40).token_ids


def test_the_lock_is_held_while_generating(scorer: GradScorer) -> None:
    seen: list[bool] = []

    def probe(rec: Recorder) -> None:
        box: list[bool] = []
        t = threading.Thread(target=lambda: box.append(scorer.lock.acquire(blocking=False)))
        t.start()
        t.join(WAIT)
        seen.append(box[0])

    generate_batch(scorer, [GenerationRequest(messages=ask(PROMPTS[0]), max_new_tokens=2)], streamers=[Recorder(probe)])
    assert seen == [False, False]
    assert scorer.lock.acquire(blocking=False)
    scorer.lock.release()


def test_mismatched_streamers_raise(scorer: GradScorer) -> None:
    with pytest.raises(InputError):
        generate_batch(scorer, [GenerationRequest(messages=ask("hi"))], streamers=[None, None])


def test_request_validation() -> None:
    with pytest.raises(ValidationError):
        GenerationRequest(messages=ask("hi"), max_new_tokens=0)
    with pytest.raises(ValidationError):
        GenerationRequest(messages=ask("hi"), top_logprobs=21)
    with pytest.raises(ValidationError):
        GenerationRequest(messages=ask("hi"), temprature=0.5)  # type: ignore[call-arg]
    request = GenerationRequest(messages=ask("hi"), stop=["a", "b"])
    assert request.stop == ("a", "b")
    with pytest.raises(ValidationError):
        request.max_new_tokens = 3  # type: ignore[misc]
    dumped = GenerationRequest(messages=ask("hi"), spans=lambda ids: SpanPlan()).model_dump()
    assert "spans" not in dumped and dumped["max_new_tokens"] == 256


# --- MicroBatcher -------------------------------------------------------------------------------------------------


def _submit_together(batcher: MicroBatcher, requests: list[GenerationRequest]) -> list[ScoreResult]:
    barrier = threading.Barrier(len(requests))

    def one(request: GenerationRequest) -> ScoreResult:
        barrier.wait(WAIT)
        return batcher.submit(request).result(WAIT)

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def test_concurrent_submits_are_batched(scorer: GradScorer) -> None:
    sizes: list[int] = []
    requests = [GenerationRequest(messages=ask(p), max_new_tokens=6) for p in [*PROMPTS, "Hello there"]]
    # max_batch requests arrive well within max_wait_ms, so they form one batch (the batch fills before the wait ends)
    with MicroBatcher(scorer, max_batch=4, max_wait_ms=30_000, on_batch=sizes.append) as batcher:
        results = _submit_together(batcher, requests)
    assert sizes == [4]
    for request, result in zip(requests, results, strict=True):
        assert_scores_as_alone(scorer, result, request)


def test_submits_within_max_wait_share_a_batch(scorer: GradScorer) -> None:
    sizes: list[int] = []
    requests = [GenerationRequest(messages=ask(p), max_new_tokens=4) for p in PROMPTS]
    with MicroBatcher(scorer, max_batch=8, max_wait_ms=200, on_batch=sizes.append) as batcher:
        with scorer.lock:  # the first batch waits for the lock, so the later submits cannot miss all batches
            futures = [batcher.submit(r) for r in requests]
        results = [f.result(WAIT) for f in futures]
    assert sum(sizes) == 3 and max(sizes) > 1
    assert [r.n_response_tokens for r in results] == [4, 4, 4]


def test_max_batch_one_runs_one_at_a_time(scorer: GradScorer) -> None:
    sizes: list[int] = []
    requests = [GenerationRequest(messages=ask(p), max_new_tokens=5) for p in PROMPTS]
    with MicroBatcher(scorer, max_batch=1, max_wait_ms=50, on_batch=sizes.append) as batcher:
        results = _submit_together(batcher, requests)
    assert sizes == [1, 1, 1]
    for request, result in zip(requests, results, strict=True):
        assert_scores_as_alone(scorer, result, request)


def _wait_until(condition: Any) -> None:
    done = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition not reached")


def test_a_full_queue_raises_and_the_queue_drains(scorer: GradScorer) -> None:
    request = GenerationRequest(messages=ask(PROMPTS[1]), max_new_tokens=3)
    with MicroBatcher(scorer, max_batch=1, max_wait_ms=0, max_queue=2) as batcher:
        with scorer.lock:  # the worker takes the first request and waits for the model
            first = batcher.submit(request)
            _wait_until(lambda: batcher.running == 1)
            waiting = [batcher.submit(request), batcher.submit(request)]
            assert batcher.depth == 2
            with pytest.raises(QueueFullError) as info:
                batcher.submit(request)
            assert info.value.retry_after > 0 and isinstance(info.value, GradguardError)
        results = [f.result(WAIT) for f in [first, *waiting]]
        assert len({r.token_ids for r in results}) == 1
        _wait_until(lambda: batcher.running == 0 and batcher.depth == 0)
        with pytest.raises(QueueFullError) as info:  # an estimate from the batches run so far
            with scorer.lock:
                batcher.submit(request)
                _wait_until(lambda: batcher.running == 1)
                batcher.submit(request)
                batcher.submit(request)
                batcher.submit(request)
        assert info.value.retry_after > 0


def test_close_fails_pending_requests(scorer: GradScorer) -> None:
    request = GenerationRequest(messages=ask(PROMPTS[0]), max_new_tokens=3)
    batcher = MicroBatcher(scorer, max_batch=1, max_wait_ms=0)
    streamer = Recorder()
    with scorer.lock:
        running = batcher.submit(request)
        _wait_until(lambda: batcher.running == 1)
        pending = batcher.submit(request, streamer=streamer)
        closer = threading.Thread(target=batcher.close)
        closer.start()
        with pytest.raises(GradguardError, match="closed"):
            pending.result(WAIT)
        assert streamer.ends == 1
    closer.join(WAIT)
    assert not closer.is_alive()
    assert running.result(WAIT).n_response_tokens == 3  # the running batch finishes
    with pytest.raises(GradguardError, match="closed"):
        batcher.submit(request)


def test_cancelled_requests_are_dropped(scorer: GradScorer) -> None:
    sizes: list[int] = []
    request = GenerationRequest(messages=ask(PROMPTS[0]), max_new_tokens=3)
    cancelled = threading.Event()
    cancelled.set()
    with MicroBatcher(scorer, max_batch=8, max_wait_ms=0, on_batch=sizes.append) as batcher:
        with scorer.lock:
            blocker = batcher.submit(request)
            _wait_until(lambda: batcher.running == 1)
            dropped = batcher.submit(request, cancel=cancelled)
            withdrawn = batcher.submit(request)
            kept = batcher.submit(request)
            assert withdrawn.cancel()
        with pytest.raises(GenerationCancelled):
            dropped.result(WAIT)
        assert kept.result(WAIT).n_response_tokens == 3
        assert blocker.result(WAIT).n_response_tokens == 3
    assert sizes == [1, 1]


def test_batcher_rejects_bad_settings(scorer: GradScorer) -> None:
    with pytest.raises(InputError):
        MicroBatcher(scorer, max_batch=0)


def test_max_time_stops_its_row_only(scorer: GradScorer) -> None:
    requests = [
        GenerationRequest(messages=ask(PROMPTS[0]), max_new_tokens=20, max_time=1e-9),  # out of time at once
        GenerationRequest(messages=ask(PROMPTS[1]), max_new_tokens=20),
    ]
    timed, full = (ok(r) for r in generate_batch(scorer, requests))
    assert timed.n_response_tokens == 1 and timed.finish_reason == "stop"  # as generate_and_score with max_time
    assert full.n_response_tokens == 20 and full.finish_reason == "length"
    assert_scores_as_alone(scorer, timed, requests[0])


def test_importing_batching_imports_no_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys, gradguard\n"
        "from gradguard import GenerationRequest, MicroBatcher\n"
        "from gradguard.batching import generate_batch\n"
        "heavy = [m for m in ('torch', 'transformers', 'fastapi', 'starlette') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=WAIT)


def test_a_group_is_scored_in_one_batched_pass(scorer: GradScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    import gradguard.scorer as scorer_module

    calls: list[int] = []
    real = scorer_module.reused_scores

    def counting(model: Any, states: Any, rows: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(rows))
        return real(model, states, rows, *args, **kwargs)

    monkeypatch.setattr(scorer_module, "reused_scores", counting)  # the group's answers reuse its saved states
    requests = [
        GenerationRequest(messages=ask(PROMPTS[0]), max_new_tokens=6, top_logprobs=3),
        GenerationRequest(messages=ask(PROMPTS[1]), max_new_tokens=9),
        GenerationRequest(messages=ask(PROMPTS[2]), max_new_tokens=4, top_logprobs=1),
    ]
    results = [ok(r) for r in generate_batch(scorer, requests)]
    assert calls == [3]
    assert {r.timings.score_path for r in results} == {"reuse"}
    for request, result in zip(requests, results, strict=True):
        assert_scores_as_alone(scorer, result, request)
        alone = scorer.score(request.messages, list(result.token_ids), top_logprobs=request.top_logprobs)
        if request.top_logprobs:
            assert result.top_logprobs is not None and alone.top_logprobs is not None
            assert [[t for t, _ in pos] for pos in result.top_logprobs] == [
                [t for t, _ in pos] for pos in alone.top_logprobs
            ]
            assert all(len(pos) == request.top_logprobs for pos in result.top_logprobs)
        else:
            assert result.top_logprobs is None
    assert len({r.timings.score_s for r in results}) == 1


def test_a_failing_batched_pass_falls_back_to_scoring_alone(
    scorer: GradScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gradguard.scorer as scorer_module

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("batched pass failed")

    monkeypatch.setattr(scorer_module, "fast_scores_rows", broken)
    requests = [GenerationRequest(messages=ask(p), max_new_tokens=5) for p in PROMPTS[:2]]
    results = [ok(r) for r in generate_batch(scorer, requests)]
    for request, result in zip(requests, results, strict=True):
        assert_scores_as_alone(scorer, result, request)


def test_score_requests_isolates_a_failing_item(scorer: GradScorer) -> None:
    from gradguard.scorer import ScoreRequest

    def broken(ids: list[int]) -> SpanPlan:
        raise ValueError("boom")

    prompts = [scorer.prompt_ids(ask(p)) for p in PROMPTS]
    answers = [[int(i) for i in scorer.tokenizer(t, add_special_tokens=False)["input_ids"]] for t in ("a cat", "4", "")]
    items = [
        ScoreRequest(prompts[0], scorer._spt_position(prompts[0]), [answers[0]], spans=broken),
        ScoreRequest(prompts[1], scorer._spt_position(prompts[1]), [answers[1]]),
        ScoreRequest(prompts[2], scorer._spt_position(prompts[2]), [answers[2]]),  # empty: NaN scores
    ]
    bad, good, empty = scorer._score_requests(items)
    assert isinstance(bad, GradguardError) and "boom" in str(bad)
    assert isinstance(good, list) and isinstance(empty, list)
    alone = scorer._score_ids(prompts[1], scorer._spt_position(prompts[1]), [answers[1]], cache=None)[0]
    for key in KEYS:
        assert getattr(good[0], key) == pytest.approx(getattr(alone, key), rel=1e-4), key
    assert empty[0].empty


def test_a_lone_request_is_generate_and_score_itself(scorer: GradScorer) -> None:
    request = GenerationRequest(messages=ask(PROMPTS[2]), max_new_tokens=12, top_logprobs=2)
    recorder = Recorder()
    lone = ok(generate_batch(scorer, [request], streamers=[recorder])[0])
    direct = scorer.generate_and_score(request.messages, max_new_tokens=12, top_logprobs=2)
    assert lone.token_ids == direct.token_ids and lone.finish_reason == direct.finish_reason
    for key in KEYS:  # the same computation (unpadded generation, scoring on its KV cache): equal, not close
        assert getattr(lone, key) == getattr(direct, key), key
    assert recorder.ends == 1 and recorder.prompt is not None
    assert recorder.tokens[: len(lone.token_ids)] == list(lone.token_ids)
