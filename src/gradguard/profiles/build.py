"""Building a measured profile: SPS on a paraphrase file → offset + layer span → :class:`Profile`."""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np

from gradguard.data import DEFAULT_SYSTEM_PROMPT, file_sha256, load_paraphrase_groups
from gradguard.errors import InputError
from gradguard.profiles.compat import model_dims
from gradguard.profiles.fingerprint import chat_template_fingerprint
from gradguard.profiles.schema import Profile, SPSData, SPSMatrix
from gradguard.profiles.sps import SPSResult, compute_sps, top_half

__all__ = ["choose_layer_span", "sps_matrix", "build_profile", "profile_from_sps", "SpanRule"]

#: How the layer span is picked: ``top-half`` (the paper's, most stable) or ``band``
#: (the contiguous layers around the peak whose SPS at the chosen offset is at least
#: half the peak's, within the top half).
SpanRule = Literal["top-half", "band"]


def choose_layer_span(sps: SPSResult, offset: int, rule: SpanRule = "top-half") -> tuple[int, int]:
    """The half-open layer span ``[start, stop)`` for SemGrad at ``offset``."""
    L = sps.num_layers
    a, b = top_half(L)
    if rule == "top-half":
        return (a, b)
    if rule != "band":
        raise InputError(f"unknown layer-span rule {rule!r}; use 'top-half' or 'band'")
    col = sps.sps[:, sps.offsets.index(offset)]
    top = col[a:b]
    peak = a + int(np.argmax(top))
    level = 0.5 * col[peak]
    lo = hi = peak
    while lo - 1 >= a and col[lo - 1] >= level:
        lo -= 1
    while hi + 1 < b and col[hi + 1] >= level:
        hi += 1
    return (lo, hi + 1)


def sps_matrix(sps: SPSResult, chosen: int, data: SPSData) -> SPSMatrix:
    """The profile's JSON form of an :class:`SPSResult`."""

    def rows(a: np.ndarray) -> tuple[tuple[float, ...], ...]:
        return tuple(tuple(round(float(v), 6) for v in r) for r in a)

    return SPSMatrix(
        offsets=sps.offsets,
        sps=rows(sps.sps),
        within=rows(sps.within),
        across=rows(sps.across),
        offset_tokens=sps.offset_tokens,
        candidate_offsets=sps.candidate_offsets,
        top_half_mean=tuple(round(float(v), 6) for v in sps.top_half_mean()),
        chosen_offset=chosen,
        data=data,
    )


def profile_from_sps(
    model: Any,
    tokenizer: Any,
    sps: SPSResult,
    data: SPSData,
    *,
    model_id: str | None = None,
    span_rule: SpanRule = "top-half",
) -> Profile:
    """A measured profile from an SPS result: best candidate offset, its layer span, the matrix and its data."""
    model_type, num_layers, hidden = model_dims(model)
    if num_layers != sps.num_layers:
        raise InputError(f"the SPS matrix has {sps.num_layers} layers but the model has {num_layers}")
    offset = sps.best_offset()
    span = choose_layer_span(sps, offset, span_rule)
    name = model_id or getattr(model, "name_or_path", None) or str(model_type)
    means = dict(zip(sps.offsets, sps.top_half_mean(), strict=True))
    return Profile(
        name=str(name),
        kind="measured",
        model_id=model_id,
        model_type=str(model_type),
        num_layers=num_layers,
        hidden_size=hidden,
        chat_template_fingerprint=chat_template_fingerprint(tokenizer),
        spt_offset=offset,
        layer_span=span,
        anchor_token=sps.offset_tokens[sps.offsets.index(offset)],
        sps=sps_matrix(sps, offset, data),
        notes=(
            f"Measured by `gradguard profile build` on {sps.n_queries} queries ({sps.n_variants} variants); "
            f"offset {offset} has the highest top-half SPS ({means[offset]:.4f}) among candidates "
            f"{list(sps.candidate_offsets)}; layer span rule {span_rule}."
        ),
    )


def build_profile(
    model: Any,
    tokenizer: Any,
    paraphrases: str | os.PathLike[str],
    *,
    model_id: str | None = None,
    num_queries: int = 200,
    num_offsets: int = 8,
    max_paraphrases: int | None = None,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    span_rule: SpanRule = "top-half",
    batch_size: int = 16,
    progress: bool = True,
) -> Profile:
    """Measure SPS on the first ``num_queries`` queries of a paraphrase JSONL file and return the profile.

    ``max_paraphrases`` keeps at most that many paraphrases per query (all if None).
    The system prompt must match the one used when scoring (default: gradguard's QA prompt).
    """
    if max_paraphrases is not None and max_paraphrases < 1:
        raise InputError(f"max_paraphrases={max_paraphrases} must be >= 1 (or None for all)")
    groups = load_paraphrase_groups(paraphrases, num_queries)
    texts = [
        list(g.variants if max_paraphrases is None else (g.query, *g.paraphrases[:max_paraphrases])) for g in groups
    ]
    sps = compute_sps(
        model,
        tokenizer,
        texts,
        num_offsets=num_offsets,
        system_prompt=system_prompt,
        batch_size=batch_size,
        progress=progress,
    )
    data = SPSData(
        path=os.fspath(paraphrases),
        sha256=file_sha256(paraphrases),
        n_queries=sps.n_queries,
        n_variants=sps.n_variants,
        max_paraphrases=max_paraphrases,
        system_prompt=system_prompt,
    )
    return profile_from_sps(model, tokenizer, sps, data, model_id=model_id, span_rule=span_rule)
