"""The SPS heat map: layers (rows) × prompt offsets (columns), the chosen cell marked."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gradguard.extras import require
from gradguard.profiles.schema import Profile, SPSMatrix

__all__ = ["plot_sps"]


def plot_sps(
    source: Profile | SPSMatrix,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    layer_span: tuple[int, int] | None = None,
    reference_offset: int | None = None,
) -> Path:
    """Draw the SPS heat map to ``path`` (PNG) and return it.

    Columns run from the earliest offset (left) to the prompt's last token (right) and
    are labelled with their token. Non-candidate offsets (before the end of the user's
    text) are hatched. The chosen offset's column is outlined over ``layer_span`` (the
    top half by default), and the layer-span boundary is dashed. ``reference_offset``
    (e.g. the family default) is marked with a triangle for comparison.
    """
    from gradguard.calibration.plots import pyplot

    plt = pyplot()
    Rectangle = require("matplotlib.patches", "calibrate", "plotting").Rectangle

    if isinstance(source, Profile):
        if source.sps is None:
            from gradguard.profiles.errors import ProfileError

            raise ProfileError(
                f"profile {source.name!r} has no SPS matrix to plot; build it with `gradguard profile build`"
            )
        m = source.sps
        title = title or f"SPS — {source.name}"
        layer_span = layer_span or source.layer_span
    else:
        m = source
    values = np.asarray(m.sps)  # [L, K], column j = offsets[j]
    L, K = values.shape
    order = np.argsort(m.offsets)  # -K … -1, left to right
    vals = values[:, order]
    offs = [m.offsets[j] for j in order]
    toks = [m.offset_tokens[j] for j in order]
    span = layer_span or (L - L // 2, L)

    fig, (ax, axm) = plt.subplots(
        2, 1, figsize=(1.0 + 0.75 * K, 7.0), gridspec_kw={"height_ratios": [5, 1]}, sharex=True
    )
    vmax = float(np.nanmax(np.abs(vals))) or 1.0
    im = ax.imshow(
        vals, origin="lower", aspect="auto", cmap="viridis", vmin=min(0.0, float(np.nanmin(vals))), vmax=vmax
    )
    fig.colorbar(im, ax=[ax, axm], label="SPS = within − across", fraction=0.04, pad=0.02)
    for x, k in enumerate(offs):
        if k not in m.candidate_offsets:
            ax.add_patch(Rectangle((x - 0.5, -0.5), 1, L, fill=False, hatch="///", edgecolor="white", lw=0))
    cx = offs.index(m.chosen_offset)
    ax.add_patch(Rectangle((cx - 0.5, span[0] - 0.5), 1, span[1] - span[0], fill=False, edgecolor="red", lw=2.5))
    ax.axhline(span[0] - 0.5, color="white", ls="--", lw=1)
    if reference_offset is not None and reference_offset in offs:
        rx = offs.index(reference_offset)
        ax.plot([rx], [L - 0.5], marker="v", color="orange", markersize=12, clip_on=False)
    ax.set_ylabel("layer l (hidden state entering layer l)")
    ax.set_title(title or "SPS")

    means = np.asarray(m.top_half_mean)[order]
    colors = [
        "red" if k == m.chosen_offset else ("tab:blue" if k in m.candidate_offsets else "lightgrey") for k in offs
    ]
    axm.bar(range(K), means, color=colors)
    axm.axhline(0, color="black", lw=0.5)
    axm.set_ylabel("top-half\nmean")
    axm.set_xticks(range(K))
    axm.set_xticklabels([f"{k}\n{t!r}"[:24] for k, t in zip(offs, toks, strict=True)], fontsize=8)
    axm.set_xlabel("offset k from the end of the prompt (token)")
    note = f"chosen k={m.chosen_offset} (red), hatched: before the end of the user's text"
    if reference_offset is not None:
        note += f"; ▼ family default k={reference_offset}"
    fig.text(0.01, 0.005, note + f"; {m.data.n_queries} queries, {m.data.n_variants} variants", fontsize=7)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
