"""One model pass per answer: stop strings, top log-probabilities and cancellation inside the scorer."""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from gradguard import GradScorer
from gradguard.errors import GenerationCancelled, GradguardError, InputError
from gradguard.testing import make_tiny_model

MESSAGES = [{"role": "user", "content": "Tell me a story about a cat."}]
MAX_NEW = 40


@pytest.fixture(scope="module")
def scorer() -> GradScorer:
    model, tok = make_tiny_model("qwen2")
    return GradScorer(model, tok, model_name="tiny-qwen2")


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has no calibration.*")
        yield


class PassCounter:
    """Counts the causal LM's forward calls (generation steps) and the decoder's (generation + scoring)."""

    def __init__(self, model: Any) -> None:
        self.lm = 0
        self.decoder = 0
        self._handles = [
            model.register_forward_pre_hook(self._count_lm),
            model.get_decoder().register_forward_pre_hook(self._count_decoder),
        ]

    def _count_lm(self, *args: Any) -> None:
        self.lm += 1

    def _count_decoder(self, *args: Any) -> None:
        self.decoder += 1

    @property
    def scoring(self) -> int:
        """Decoder passes that were not a generation step: gradguard's scoring passes (and prefills)."""
        return self.decoder - self.lm

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def counted(scorer: GradScorer, fn: Any) -> tuple[Any, PassCounter]:
    counter = PassCounter(scorer.model)
    try:
        return fn(), counter
    finally:
        counter.close()


def _stop_string_in(text: str) -> str:
    """A printable ASCII character first occurring a few characters into ``text`` (one byte-level token)."""
    for i, ch in enumerate(text):
        if i >= 3 and ch.isascii() and ch.isprintable() and not ch.isspace() and ch not in text[:i]:
            return ch
    pytest.skip(f"no usable stop character in {text!r}")


def test_generation_stops_at_a_stop_string_and_scores_exactly_the_kept_tokens(scorer: GradScorer) -> None:
    full, plain = counted(scorer, lambda: scorer.generate_and_score(MESSAGES, max_new_tokens=MAX_NEW))
    stop = _stop_string_in(full.response)
    cut, with_stop = counted(scorer, lambda: scorer.generate_and_score(MESSAGES, max_new_tokens=MAX_NEW, stop=[stop]))

    assert stop not in cut.response and full.response.startswith(cut.response)
    assert cut.response == scorer.tokenizer.decode(list(cut.token_ids), skip_special_tokens=True)
    assert full.token_ids[: len(cut.token_ids)] == cut.token_ids
    assert full.response[len(cut.response) :].startswith(stop)  # nothing between the kept text and the stop string here
    assert cut.finish_reason == "stop" and cut.n_response_tokens == len(cut.token_ids) > 0

    again = scorer.score(MESSAGES, list(cut.token_ids))  # same tokens, same numbers
    for key in ("semgrad", "paragrad", "exgrad", "hybridgrad", "g_nll", "mean_entropy"):
        assert getattr(cut, key) == pytest.approx(getattr(again, key), rel=1e-5), key
    assert again.response == cut.response and again.finish_reason is None

    # one scoring pass per answer (the generation's cache is reused: no prefill), and fewer generation steps
    assert plain.scoring == 1 and with_stop.scoring == 1
    assert with_stop.lm <= plain.lm and with_stop.decoder <= plain.decoder


def test_finish_reason_length_and_stop(scorer: GradScorer) -> None:
    short = scorer.generate_and_score(MESSAGES, max_new_tokens=3)
    assert short.finish_reason == "length" and short.n_response_tokens == 3
    eot = next(iter(scorer._eot_ids))

    class ForceEndOfTurn:  # a logits processor that makes the third token the end-of-turn token
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if input_ids.shape[1] - len(scorer.prompt_ids(MESSAGES)) == 2:
                scores = torch.full_like(scores, -1e9)
                scores[:, eot] = 0.0
            return scores

    from transformers import LogitsProcessorList

    ended = scorer.generate_and_score(
        MESSAGES, max_new_tokens=3, logits_processor=LogitsProcessorList([ForceEndOfTurn()])
    )
    assert ended.finish_reason == "stop" and ended.n_response_tokens == 2


def test_a_token_straddling_the_stop_string_is_dropped() -> None:
    """Kept: the tokens before the first one whose text overlaps the stop string's first occurrence."""
    vocab = {0: "Hel", 1: "lo, ", 2: "wor", 3: "ld#", 4: "##", 5: "!"}

    class Tok:
        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            return "".join(vocab[i] for i in ids)

    fake = SimpleNamespace(tokenizer=Tok())
    before_stop = GradScorer._before_stop
    assert before_stop(fake, [0, 1, 2, 3, 4, 5], ("##",)) == ([0, 1, 2], True)  # "ld#" straddles "##"
    assert before_stop(fake, [0, 1, 2, 3, 4, 5], ("!", "o, w")) == ([0], True)  # the first occurrence of any
    assert before_stop(fake, [0, 1, 2, 4, 5], ("##",)) == ([0, 1, 2], True)  # a token that starts it exactly
    assert before_stop(fake, [4, 5], ("##",)) == ([], True)
    assert before_stop(fake, [0, 1, 2], ("##",)) == ([0, 1, 2], False)
    assert before_stop(fake, [0, 1, 2], ()) == ([0, 1, 2], False)


def test_stop_arguments(scorer: GradScorer) -> None:
    full = scorer.generate_and_score(MESSAGES, max_new_tokens=8)
    assert scorer.generate_and_score(MESSAGES, max_new_tokens=8, stop=["", ""]).token_ids == full.token_ids
    for bad in ([1], ["a", None], [b"x"]):
        with pytest.raises(InputError, match=repr(bad[-1]).replace("(", r"\(")):
            scorer.generate_and_score(MESSAGES, max_new_tokens=2, stop=bad)
    stop = _stop_string_in(scorer.generate_and_score(MESSAGES, max_new_tokens=MAX_NEW).response)
    one = scorer.generate_and_score(MESSAGES, max_new_tokens=MAX_NEW, stop=stop)  # a single string is one stop string
    assert stop not in one.response and one.finish_reason == "stop"


def test_generate_many_cuts_every_completion(scorer: GradScorer) -> None:
    torch.manual_seed(0)
    results = scorer.generate_many(MESSAGES, 3, max_new_tokens=20, do_sample=True, stop=["e", "a"])
    for r in results:
        assert "e" not in r.response and "a" not in r.response
        assert r.response == scorer.tokenizer.decode(list(r.token_ids), skip_special_tokens=True)
        assert r.finish_reason in ("stop", "length")


def _brute_top(
    scorer: GradScorer, messages: Any, token_ids: tuple[int, ...], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle: one separate full forward pass over prompt + response."""
    prompt = scorer.prompt_ids(messages)
    ids = torch.tensor([prompt + list(token_ids)])
    with torch.no_grad():
        logits = scorer.model(input_ids=ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(token_ids)].float()
    return torch.log_softmax(logits, dim=-1).topk(k, dim=-1)


def test_top_logprobs_come_from_the_scoring_pass_and_match_a_full_forward_pass(scorer: GradScorer) -> None:
    k = 5
    result, passes = counted(scorer, lambda: scorer.generate_and_score(MESSAGES, max_new_tokens=12, top_logprobs=k))
    assert passes.scoring == 1  # no extra pass for the alternatives
    top = result.top_logprobs
    assert top is not None and len(top) == result.n_response_tokens
    values, indices = _brute_top(scorer, MESSAGES, result.token_ids, k)
    for t, row in enumerate(top):
        assert len(row) == k
        assert [i for i, _ in row] == indices[t].tolist()
        assert [v for _, v in row] == pytest.approx(values[t].tolist(), abs=1e-4)
        # greedy: the generated token is the most likely one, and its log-probability is the top-1 value
        assert row[0][0] == result.token_ids[t] and result.token_logprobs[t] == row[0][1]
    scored = scorer.score(MESSAGES, list(result.token_ids), top_logprobs=2)
    assert scored.top_logprobs is not None
    assert [[i for i, _ in row] for row in scored.top_logprobs] == [[i for i, _ in row[:2]] for row in top]
    many = scorer.score_many(MESSAGES, [list(result.token_ids), "Hi"], top_logprobs=1)
    assert [len(r.top_logprobs or []) for r in many] == [result.n_response_tokens, many[1].n_response_tokens]


def test_top_logprobs_are_optional_small_and_not_in_json(scorer: GradScorer) -> None:
    plain = scorer.score(MESSAGES, "Hi there")
    assert plain.top_logprobs is None and plain.finish_reason is None
    asked = scorer.score(MESSAGES, "Hi there", top_logprobs=3)
    assert asked.top_logprobs is not None
    assert "top_logprobs" not in json.loads(asked.model_dump_json())
    assert "top_logprobs" not in asked.metadata() and "finish_reason" not in asked.metadata()
    assert scorer.score(MESSAGES, "", top_logprobs=3).top_logprobs == []  # an empty answer has no positions
    for bad in (-1, 21, 2.5, True, "3"):
        with pytest.raises(InputError, match=r"top_logprobs=.*0 \(none\) to 20"):
            scorer.score(MESSAGES, "Hi", top_logprobs=bad)
        with pytest.raises(InputError, match="top_logprobs"):
            scorer.generate_and_score(MESSAGES, max_new_tokens=2, top_logprobs=bad)


def _lock_is_free(scorer: GradScorer) -> bool:
    free = scorer.lock.acquire(blocking=False)
    if free:
        scorer.lock.release()
    return free


def _run_in_thread(fn: Any) -> Any:
    """Run ``fn`` in another thread (an RLock is reentrant for its owner, so only another thread can test it)."""
    out: dict[str, Any] = {}

    def work() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back
            out["error"] = exc

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_cancel_before_generation(scorer: GradScorer) -> None:
    cancel = threading.Event()
    cancel.set()
    ended: list[bool] = []
    streamer = SimpleNamespace(put=lambda v: None, end=lambda: ended.append(True))
    with pytest.raises(GenerationCancelled, match="cancelled") as info:
        counted(scorer, lambda: scorer.generate_and_score(MESSAGES, max_new_tokens=5, cancel=cancel, streamer=streamer))
    assert isinstance(info.value, GradguardError) and ended == [True]
    assert _run_in_thread(lambda: _lock_is_free(scorer))


def test_cancel_while_generating_stops_generation_and_skips_scoring(scorer: GradScorer) -> None:
    cancel = threading.Event()
    steps: list[int] = []

    class CancelAfterThree:  # a streamer: the consumer leaves after three tokens
        def put(self, value: torch.Tensor) -> None:
            steps.append(1)
            if len(steps) == 4:  # the prompt, then three tokens
                cancel.set()

        def end(self) -> None:
            pass

    counter = PassCounter(scorer.model)
    try:
        with pytest.raises(GenerationCancelled):
            scorer.generate_and_score(MESSAGES, max_new_tokens=MAX_NEW, cancel=cancel, streamer=CancelAfterThree())
    finally:
        counter.close()
    assert counter.lm <= 4 and counter.scoring == 0  # stopped at the next token; nothing scored
    assert _run_in_thread(lambda: _lock_is_free(scorer))
    assert scorer.generate_and_score(MESSAGES, max_new_tokens=3, cancel=threading.Event()).scored


def test_cancel_from_another_thread_frees_the_lock_for_a_waiting_caller(scorer: GradScorer) -> None:
    cancel = threading.Event()
    started = threading.Event()

    class Signal:
        def put(self, value: torch.Tensor) -> None:
            started.set()

        def end(self) -> None:
            pass

    def generate() -> Any:
        return scorer.generate_and_score(MESSAGES, max_new_tokens=200, cancel=cancel, streamer=Signal())

    worker = threading.Thread(target=lambda: pytest.raises(GenerationCancelled, generate))
    worker.start()
    assert started.wait(30)
    cancel.set()
    worker.join(30)
    assert not worker.is_alive()
    assert _lock_is_free(scorer)
