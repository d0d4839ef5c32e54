"""What the review pages show, computed without a web framework: the queue's filters from a query string and the
answer's tokens shaded by their uncertainty."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlencode

from gradguard.review.queue import REVIEW_STATUSES, ReviewFilter

__all__ = [
    "FilterError",
    "QueueQuery",
    "parse_queue_query",
    "SHADES",
    "SHADE_BINS",
    "ShadedToken",
    "ShadedAnswer",
    "parse_shade",
    "shade_answer",
    "format_confidence",
    "format_time",
    "truncate",
]

#: What an answer's tokens can be shaded by: ``nll`` (-log p of the token, nats) or ``entropy`` (of the
#: distribution it was drawn from, nats).
Shade = Literal["nll", "entropy"]
SHADES: tuple[Shade, ...] = ("nll", "entropy")
#: Lower edges (nats) of the shading classes 1..5; class 0 (unshaded) is below the first edge.
SHADE_BINS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
_SHADE_LABELS = {"nll": "NLL (−log p)", "entropy": "entropy"}
#: The query-string names of the queue filters, in the order links write them.
FILTER_PARAMS = ("status", "task", "reason", "min_confidence", "max_confidence")


class FilterError(ValueError):
    """A query-string value the queue page cannot use (answered with 400 and this message)."""


@dataclass(frozen=True)
class QueueQuery:
    """The queue page's filters and page number, as read from its query string.

    ``status`` ``None`` means every status (``?status=all``); an absent ``status`` means ``pending``.
    """

    status: str | None = "pending"
    task: str | None = None
    reason: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    page: int = 1

    def to_filter(self) -> ReviewFilter:
        """The store filter these values select."""
        return ReviewFilter(
            status=self.status,  # checked against REVIEW_STATUSES when parsed
            task=self.task,
            reason=self.reason,
            min_confidence=self.min_confidence,
            max_confidence=self.max_confidence,
        )

    def params(self, *, page: int | None = None) -> list[tuple[str, str]]:
        """The query-string pairs that select these filters again (and ``page`` when given and above 1)."""
        out: list[tuple[str, str]] = [("status", self.status or "all")]
        for name in ("task", "reason"):
            value = getattr(self, name)
            if value is not None:
                out.append((name, value))
        for name in ("min_confidence", "max_confidence"):
            value = getattr(self, name)
            if value is not None:
                out.append((name, f"{value:g}"))
        if page is not None and page > 1:
            out.append(("page", str(page)))
        return out

    def query_string(self, *, page: int | None = None) -> str:
        """:meth:`params` url-encoded (no leading ``?``)."""
        return urlencode(self.params(page=page))


def _text_param(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is None or not value.strip():
        return None
    if len(value) > 200:
        raise FilterError(f"the {name} filter is {len(value)} characters long; pick a {name} from the list")
    return value


def _confidence_param(params: Mapping[str, str], name: str) -> float | None:
    raw = params.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        raise FilterError(f"{name}={raw!r} is not a number; give a confidence between 0 and 1, e.g. 0.5") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise FilterError(f"{name}={raw!r} is outside [0, 1]; give a confidence between 0 and 1, e.g. 0.5")
    return value


def parse_queue_query(params: Mapping[str, str]) -> QueueQuery:
    """The filters and page number of a queue-page query string; raises :class:`FilterError` naming a bad value.

    ``status``: one of the review statuses or ``all`` (absent: ``pending``); ``task``, ``reason``: any value
    (empty: no filter); ``min_confidence``, ``max_confidence``: numbers in [0, 1], min at most max; ``page``: a
    whole number from 1.
    """
    raw_status = params.get("status")
    status: str | None
    if raw_status is None:
        status = "pending"
    elif raw_status.strip() in ("", "all"):
        status = None
    elif raw_status.strip() in REVIEW_STATUSES:
        status = raw_status.strip()
    else:
        raise FilterError(f"status={raw_status!r} is not one of {['all', *REVIEW_STATUSES]}; pick one of them")
    low = _confidence_param(params, "min_confidence")
    high = _confidence_param(params, "max_confidence")
    if low is not None and high is not None and low > high:
        raise FilterError(f"min_confidence={low:g} is above max_confidence={high:g}; swap them or widen the range")
    raw_page = params.get("page")
    page = 1
    if raw_page is not None and raw_page.strip():
        text = raw_page.strip()
        if not text.isdigit() or int(text) < 1 or len(text) > 9:
            raise FilterError(f"page={raw_page!r} is not a page number; pages are numbered from 1")
        page = int(text)
    return QueueQuery(
        status=status,
        task=_text_param(params, "task"),
        reason=_text_param(params, "reason"),
        min_confidence=low,
        max_confidence=high,
        page=page,
    )


def parse_shade(raw: str | None) -> Shade:
    """``nll`` (the default, for ``None``/empty) or ``entropy``; raises :class:`FilterError` otherwise."""
    if raw is None or not raw.strip():
        return "nll"
    value = raw.strip().lower()
    if value == "nll":
        return "nll"
    if value == "entropy":
        return "entropy"
    raise FilterError(f"shade={raw!r} is not one of {list(SHADES)}; shade tokens by nll or entropy")


@dataclass(frozen=True)
class ShadedToken:
    """One answer token: its text, its shading class (``0``-``5``, ``None``: no value) and its tooltip."""

    text: str
    level: int | None
    title: str


@dataclass(frozen=True)
class ShadedAnswer:
    """The answer as shaded tokens, with what the legend needs.

    ``legend`` is ``[(level, label)]`` from unshaded to darkest; ``matches`` is False when the tokens do not
    spell the stored answer (then the page shows the stored answer too).
    """

    shade: Shade
    label: str
    tokens: list[ShadedToken]
    legend: list[tuple[int, str]]
    maximum: float | None
    mean: float | None
    missing: int
    matches: bool
    other: Shade = field(default="entropy")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _level(value: float | None) -> int | None:
    if value is None:
        return None
    level = 0
    for i, edge in enumerate(SHADE_BINS, start=1):
        if value >= edge:
            level = i
    return level


def _legend() -> list[tuple[int, str]]:
    edges = SHADE_BINS
    legend = [(0, f"< {edges[0]:g}")]
    for i in range(1, len(edges)):
        legend.append((i, f"{edges[i - 1]:g} – {edges[i]:g}"))
    legend.append((len(edges), f"≥ {edges[-1]:g}"))
    return legend


def _tokens_of(metadata: Mapping[str, Any]) -> tuple[list[str], list[Any], list[Any], tuple[int, int]] | None:
    score = metadata.get("score")
    if not isinstance(score, Mapping):
        return None
    tokens = score.get("tokens")
    if not isinstance(tokens, Mapping):
        return None
    text = tokens.get("text")
    if not isinstance(text, Sequence) or isinstance(text, str) or not text:
        return None
    if not all(isinstance(t, str) for t in text):
        return None  # texts unknown: nothing to shade
    n = len(text)

    def column(name: str) -> list[Any]:
        values = tokens.get(name)
        if isinstance(values, Sequence) and not isinstance(values, str) and len(values) == n:
            return list(values)
        return [None] * n

    span = tokens.get("span")
    scored = (0, n)
    if (
        isinstance(span, Sequence)
        and not isinstance(span, str)
        and len(span) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in span)
        and 0 <= span[0] <= span[1] <= n
    ):
        scored = (int(span[0]), int(span[1]))
    return list(text), column("logprob"), column("entropy"), scored


def shade_answer(answer: str, metadata: Mapping[str, Any], shade: Shade) -> ShadedAnswer | None:
    """The answer's tokens shaded by ``shade``, from ``metadata["score"]["tokens"]``; ``None`` without tokens.

    Every token's tooltip gives its NLL (with p) and its entropy, whichever shades it. Tokens outside the
    scored ``span`` (teacher-forced, e.g. a prefill) are shown without a value.
    """
    columns = _tokens_of(metadata)
    if columns is None:
        return None
    texts, logprobs, entropies, (start, stop) = columns
    out: list[ShadedToken] = []
    values: list[float] = []
    missing = 0
    for index, (text, logprob, entropy) in enumerate(zip(texts, logprobs, entropies, strict=True)):
        if not start <= index < stop:
            out.append(ShadedToken(text=text, level=None, title="not scored (teacher-forced)"))
            missing += 1
            continue
        lp = _number(logprob)
        nll = -lp if lp is not None else None
        ent = _number(entropy)
        value = nll if shade == "nll" else ent
        parts = [
            f"NLL {nll:.3f} nats (p {math.exp(-nll):.3f})" if nll is not None else "NLL: none",
            f"entropy {ent:.3f} nats" if ent is not None else "entropy: none",
        ]
        if value is None:
            missing += 1
        else:
            values.append(value)
        out.append(ShadedToken(text=text, level=_level(value), title=" · ".join(parts)))
    return ShadedAnswer(
        shade=shade,
        label=_SHADE_LABELS[shade],
        tokens=out,
        legend=_legend(),
        maximum=max(values) if values else None,
        mean=sum(values) / len(values) if values else None,
        missing=missing,
        matches="".join(texts).strip() == answer.strip(),
        other="entropy" if shade == "nll" else "nll",
    )


def format_confidence(value: float | None) -> str:
    """``0.734`` or ``—`` for none."""
    return "—" if value is None or not math.isfinite(value) else f"{value:.3f}"


def format_time(value: datetime | None) -> str:
    """A UTC time as ``2026-11-30 12:41:22 UTC`` (``—`` for none)."""
    if value is None:
        return "—"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def truncate(text: str, width: int = 120) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"
