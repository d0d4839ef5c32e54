"""A profile in a few human-readable lines (what `gradguard profile show` prints)."""

from __future__ import annotations

from gradguard.profiles.schema import Profile

__all__ = ["profile_summary"]


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def profile_summary(profile: Profile) -> str:
    """A few lines: the offset and span, SPS, and each task's calibration with its figures."""
    p = profile
    span = p.layer_span if p.layer_span is not None else "top half"
    lines = [
        f"profile {p.name} ({p.kind}; model_type {p.model_type}"
        + (f", {p.num_layers} layers, hidden {p.hidden_size}" if p.num_layers else "")
        + ")",
        f"  semantic-preserving offset {p.spt_offset}"
        + (f" ({p.anchor_token!r})" if p.anchor_token else "")
        + f", layer span {span}",
    ]
    if p.sps is not None:
        cells = ", ".join(
            f"{k}{'*' if k == p.spt_offset else ''}={m:.4f}"
            for k, m in zip(p.sps.offsets, p.sps.top_half_mean, strict=True)
            if k in p.sps.candidate_offsets
        )
        lines.append(f"  SPS (top-half mean) over {p.sps.data.n_queries} queries: {cells}")
    if not p.calibrations:
        lines.append("  uncalibrated (confidence: null)")
    for name, cal in sorted(p.calibrations.items()):
        default = " (default task)" if name == p.default_task else ""
        lines.append(
            f"  task {name}{default}: {cal.n} answers from {cal.data.file} ({cal.n_correct} correct, judge "
            f"{cal.data.judge}); CV AUROC {_fmt(cal.cv.auroc)}, ECE {_fmt(cal.cv.ece)}, AURC {_fmt(cal.cv.aurc)}; "
            f"out-of-domain on {_fmt(cal.domain_fire_rate)} of held-out answers"
        )
        if cal.selection:
            lines.append(f"    {cal.selection}")
    return "\n".join(lines)
