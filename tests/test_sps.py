"""SPS: the streaming computation against the pairwise definition, candidates, offset/span choice, building."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gradguard.data import DataFormatError, qa_messages
from gradguard.profiles import load_profile, save_profile
from gradguard.profiles.build import build_profile, choose_layer_span
from gradguard.profiles.sps import SPSResult, compute_sps, templated_prompt
from gradguard.testing import make_tiny_model

GROUPS = [
    ["What is water made of?", "Water is composed of what?", "What makes up water?"],
    ["Who wrote Hamlet?", "Hamlet was written by whom?"],
    ["Why is the sky blue?", "What makes the sky blue?", "The sky is blue because of what?", "Reason for a blue sky?"],
]


def naive_sps(model: Any, tok: Any, groups: list[list[str]], offsets: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The definition, pair by pair: within = mean over queries of mean pairwise cosine; across over all cross pairs."""
    L = model.config.num_hidden_layers

    def states(text: str) -> torch.Tensor:
        ids, _ = templated_prompt(tok, qa_messages(text, "Answer."))
        with torch.no_grad():
            hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        return torch.stack([hs[layer][0, [len(ids) + k for k in offsets]] for layer in range(L)]).double()

    H = [[states(t) for t in g] for g in groups]
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a, b, dim=-1)  # noqa: E731
    within = torch.stack([torch.stack([cos(a, b) for a, b in itertools.combinations(g, 2)]).mean(0) for g in H]).mean(0)
    across = torch.stack(
        [cos(a, b) for i, j in itertools.permutations(range(len(H)), 2) for a in H[i] for b in H[j]]
    ).mean(0)
    return within.numpy(), across.numpy()


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_streaming_sps_matches_the_pairwise_definition(family: str) -> None:
    model, tok = make_tiny_model(family)
    r = compute_sps(model, tok, GROUPS, num_offsets=6, system_prompt="Answer.", batch_size=2, progress=False)
    within, across = naive_sps(model, tok, GROUPS, r.offsets)
    assert r.sps.shape == (4, 6)
    np.testing.assert_allclose(r.within, within, atol=1e-6)
    np.testing.assert_allclose(r.across, across, atol=1e-6)
    np.testing.assert_allclose(r.sps, within - across, atol=1e-6)


def test_prefix_reuse_gives_the_same_matrix() -> None:
    model, tok = make_tiny_model("qwen2")
    a = compute_sps(model, tok, GROUPS, num_offsets=5, system_prompt="Be brief.", progress=False, reuse_prefix=True)
    b = compute_sps(model, tok, GROUPS, num_offsets=5, system_prompt="Be brief.", progress=False, reuse_prefix=False)
    np.testing.assert_allclose(a.sps, b.sps, atol=1e-6)


def test_candidates_start_at_the_last_token_of_the_question() -> None:
    model, tok = make_tiny_model("qwen2")
    # byte-level template tail after the text: <|im_end|> \n <|im_start|> a s s i s t a n t \n  = 13 tokens
    ids, user_offset = templated_prompt(tok, qa_messages("Who wrote Hamlet?", None))
    assert user_offset == -14 and tok.decode([ids[user_offset]]) == "?"
    r = compute_sps(model, tok, GROUPS, num_offsets=16, progress=False)
    assert r.candidate_offsets == tuple(range(-1, -15, -1))
    assert r.offset_tokens[0] == "\n" and r.offset_tokens[13] == "?"


def _synthetic(values: np.ndarray, candidates: tuple[int, ...]) -> SPSResult:
    K = values.shape[1]
    return SPSResult(
        offsets=tuple(-(j + 1) for j in range(K)),
        sps=values,
        within=values + 0.5,
        across=np.full_like(values, 0.5),
        candidate_offsets=candidates,
        offset_tokens=tuple(str(j) for j in range(K)),
        n_queries=10,
        n_variants=40,
    )


def test_best_offset_uses_the_top_half_and_only_candidates() -> None:
    L, K = 8, 4
    v = np.zeros((L, K))
    v[:4, 0] = 0.9  # high only in the lower half: ignored
    v[4:, 1] = 0.3  # offset -2 best in the top half
    v[4:, 3] = 0.8  # offset -4 is higher but not a candidate (before the end of the question)
    r = _synthetic(v, candidates=(-1, -2, -3))
    assert r.best_offset() == -2
    assert np.allclose(r.top_half_mean(), [0.0, 0.3, 0.0, 0.8])


def test_layer_span_rules() -> None:
    col = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.2, 0.4, 0.3, 0.1])
    r = _synthetic(col[:, None], candidates=(-1,))
    assert choose_layer_span(r, -1, "top-half") == (5, 10)
    assert choose_layer_span(r, -1, "band") == (6, 9)  # layers whose SPS is >= half the peak


def _write_paraphrases(path: Path) -> Path:
    with path.open("w") as fh:
        for g in GROUPS:
            fh.write(json.dumps({"query": g[0], "truthful answer": ["x"], "paraphrases": g[1:]}) + "\n")
    return path


def test_build_profile_end_to_end(tmp_path: Path) -> None:
    model, tok = make_tiny_model("qwen2")
    src = _write_paraphrases(tmp_path / "para.jsonl")
    p = build_profile(model, tok, src, model_id="acme/tiny", num_queries=3, num_offsets=6, progress=False)
    assert p.kind == "measured" and p.model_id == "acme/tiny" and (p.num_layers, p.hidden_size) == (4, 32)
    assert p.sps is not None and p.sps.data.n_queries == 3 and p.sps.data.n_variants == 9
    means = dict(zip(p.sps.offsets, p.sps.top_half_mean, strict=True))
    assert p.spt_offset in p.sps.candidate_offsets
    assert means[p.spt_offset] == max(means[k] for k in p.sps.candidate_offsets)
    assert p.layer_span == (2, 4)
    again = load_profile(save_profile(p, tmp_path / "p.json"))
    assert again.sps is not None and again.sps.sps == p.sps.sps
    from gradguard.profiles.plot import plot_sps

    png = plot_sps(again, tmp_path / "sps.png", reference_offset=-3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_malformed_paraphrase_lines_name_the_line(tmp_path: Path) -> None:
    model, tok = make_tiny_model("qwen2")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a?", "paraphrases": ["b?"]}\n\n{"query": "c?", "paraphrases": ["d?"\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:3: not valid JSON"):
        build_profile(model, tok, bad, progress=False)
    bad.write_text('{"query": "a?", "paraphrases": ["b?"]}\n{"query": "c?"}\n')
    with pytest.raises(DataFormatError, match=r":2: no \"paraphrases\""):
        build_profile(model, tok, bad, progress=False)
    bad.write_text('{"query": "a?", "paraphrases": ["b?"]}\n{"query": "c?", "paraphrases": "d?, e?"}\n')
    with pytest.raises(DataFormatError, match=r":2: \"paraphrases\" must be a list of strings"):
        build_profile(model, tok, bad, progress=False)
