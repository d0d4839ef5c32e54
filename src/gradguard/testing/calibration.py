"""Synthetic calibration data with a known signal, and a real (small) calibration fitted on it.

A latent ``z ~ N(0, 1)`` makes an answer correct with probability ``σ(2.5·z)``. Low HybridGrad and
a direction of the hidden states both carry ``z``; everything else is noise. Tests use it to
check that fitting finds the signal, that a profile stores and applies it, and that domain
distances separate these answers from shifted ones.
"""

from __future__ import annotations

import base64
import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from gradguard.calibration.harness import CachedRecord
from gradguard.result import HIDDEN_POSITIONS
from gradguard.testing.results import make_score_result

if TYPE_CHECKING:
    from gradguard.profiles.schema import TaskCalibration

__all__ = ["synthetic_records", "make_task_calibration", "SYNTHETIC_LAYERS"]

SYNTHETIC_LAYERS: tuple[int, ...] = (2, 3)


def synthetic_records(
    n: int = 240,
    *,
    d: int = 32,
    layers: Sequence[int] = SYNTHETIC_LAYERS,
    seed: int = 0,
    shift: float = 0.0,
    groups: int | None = None,
    spt_offset: int = -2,
    layer_span: tuple[int, int] = (2, 4),
) -> list[CachedRecord]:
    """``n`` scored answers to ``"Question i?"`` (gold ``alpha``; the answer is ``alpha`` when correct).

    ``shift`` moves every hidden state and feature away from the ``shift=0`` data (out of domain).
    ``groups`` puts the questions into that many fold groups (default: one per question).
    """
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(1234).normal(size=d)
    direction /= np.linalg.norm(direction)
    out = []
    for i in range(n):
        z = rng.normal()
        correct = rng.uniform() < 1 / (1 + math.exp(-2.5 * z))
        log_h = -6.0 - 0.8 * z + 0.5 * rng.normal() + shift
        n_tokens = int(rng.integers(1, 6))
        entropies = tuple(float(abs(rng.normal(1.0 + shift, 0.3))) for _ in range(n_tokens))
        logprobs = tuple(float(-abs(rng.normal(0.5 + shift, 0.3))) for _ in range(n_tokens))
        result = make_score_result(
            hybridgrad=math.exp(log_h),
            semgrad=math.exp(log_h + 0.1 * rng.normal()),
            paragrad=math.exp(log_h - 4 + 0.3 * rng.normal()),
            exgrad=math.exp(log_h - 4.5 + 0.3 * rng.normal()),
            mean_entropy=float(np.mean(entropies)),
            g_nll=-float(sum(logprobs)),
            mean_nll=-float(np.mean(logprobs)),
            max_nll=-float(min(logprobs)),
            n_response_tokens=n_tokens,
            token_logprobs=logprobs,
            token_entropies=entropies,
            response="alpha" if correct else "beta",
            spt_offset=spt_offset,
            layer_span=layer_span,
        )
        hidden = rng.normal(size=(len(HIDDEN_POSITIONS), len(layers), d)) + shift * 3.0
        hidden += 1.5 * z * direction  # every position and layer carries z
        encoded = base64.b64encode(hidden.astype(np.float16).tobytes()).decode("ascii")
        out.append(
            CachedRecord(
                gen_key=f"g{seed}-{i}",
                score_key=f"s{seed}-{i}",
                index=i,
                query=f"Question {i}?",
                answers=("alpha",),
                group=f"group:{i % groups}" if groups else f"index:{i}",
                result=result,
                hidden_layers=tuple(layers),
                hidden=encoded,
                hidden_d=d,
            )
        )
    return out


@functools.lru_cache(maxsize=8)
def make_task_calibration(task: str = "closed-qa", *, n: int = 240, seed: int = 0, d: int = 32) -> TaskCalibration:
    """A :class:`~gradguard.profiles.schema.TaskCalibration` fitted on :func:`synthetic_records` (cached)."""
    from gradguard.calibration.fit import fit_task_calibration
    from gradguard.tasks import BUILTIN_TASKS

    spec = BUILTIN_TASKS[task]
    report = fit_task_calibration(
        synthetic_records(n, d=d, seed=seed),
        spec,
        data_path="synthetic.jsonl",
        data_sha256=None,
        max_new_tokens=8,
        folds=3,
        n_boot=50,
    )
    return report.calibration
