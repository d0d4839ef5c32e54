"""Fitting the task calibrator: scalar features plus hidden-state probes, chosen by nested grouped CV.

The model is an L2 logistic regression on ``[standardised scalar features, each chosen hidden
block reduced to its top-k principal components (or kept whole and standardised)]``. Which
probe (none, or every position × layer at 16 or 32 components or whole) and the regularisation
``C`` are chosen by an inner grouped cross-validation (log-loss) inside each outer fold; the
outer folds give the reported, honest figures. Folds are grouped
(:attr:`gradguard.data.QAItem.group`): questions sharing a title (or a context) never fall on
both sides of a split.

After fitting, the probe weights are folded back from principal components to the hidden space
(:class:`~gradguard.calibration.model.ProbeBlock`), so applying the calibrator is a handful of
dot products. The domain description (:class:`~gradguard.calibration.model.DomainDescription`)
uses the same features; its edge is the 99th percentile of held-out distances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gradguard.calibration.model import DomainDescription, LogisticCalibrator, ProbeBlock, as_plain
from gradguard.errors import GradguardError
from gradguard.extras import require
from gradguard.result import HIDDEN_POSITIONS

__all__ = [
    "CalibrationError",
    "FitData",
    "FeatureSet",
    "ProbeConfig",
    "NestedResult",
    "candidate_configs",
    "fit_config",
    "nested_cv",
    "choose_config",
    "fit_domain",
    "heldout_domain_figures",
    "DEFAULT_CS",
    "PROBE_POSITIONS",
]

DEFAULT_CS: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3)
#: ``C`` for a probe on whole (standardised) hidden states: thousands of inputs need a strong prior.
WHOLE_CS: tuple[float, ...] = (0.0003, 0.001, 0.003)
#: Hidden positions a probe may read (``spt`` is left out: for most profiles it is ``prompt_last`` or
#: a template token whose state carries little about the answer).
PROBE_POSITIONS: tuple[str, ...] = ("prompt_last", "answer_last", "answer_mean")
#: Principal components per block of the reduced probes (0 = the whole block, standardised).
PROBE_PCS: tuple[int, ...] = (16, 32, 0)
_DOMAIN_PCS = 16  # principal components per hidden block in the domain description


def _sklearn(submodule: str) -> Any:
    """``sklearn.<submodule>`` (the ``calibrate`` extra)."""
    return require(f"sklearn.{submodule}", "calibrate", "fitting a calibration")


class CalibrationError(GradguardError):
    """The calibration data cannot support a fit (too few answers, one outcome only, bad shapes)."""


@dataclass(frozen=True)
class FitData:
    """Everything a fit reads: scalar features ``X`` (n × f), hidden states ``H`` (n × positions × layers × d)."""

    X: NDArray[np.float64]
    features: tuple[str, ...]
    H: NDArray[np.float32] | None
    layers: tuple[int, ...]
    y: NDArray[np.float64]
    groups: NDArray[np.int64]

    def block(self, position: str, layer: int) -> NDArray[np.float64]:
        """The hidden states of every answer at one (position, layer)."""
        if self.H is None:
            raise CalibrationError("no hidden states were kept for these answers; re-collect them with hidden layers")
        return np.asarray(self.H[:, HIDDEN_POSITIONS.index(position), self.layers.index(layer)], dtype=np.float64)

    def subset(self, idx: NDArray[np.int64]) -> FitData:
        """The answers at ``idx``."""
        return FitData(
            X=self.X[idx],
            features=self.features,
            H=None if self.H is None else self.H[idx],
            layers=self.layers,
            y=self.y[idx],
            groups=self.groups[idx],
        )


@dataclass(frozen=True)
class FeatureSet:
    """Which inputs a calibrator may use: scalar features, and whether hidden-state probes are allowed."""

    name: str
    features: tuple[str, ...]
    probes: bool


@dataclass(frozen=True)
class ProbeConfig:
    """One candidate: scalar features, hidden blocks ((position, layer), …), components per block and ``C``."""

    features: tuple[str, ...]
    blocks: tuple[tuple[str, int], ...]
    C: float
    pcs: int = 32  # principal components per block; 0 = the whole block, standardised

    def describe(self) -> str:
        """A short human-readable form."""
        if not self.blocks:
            probe = "no probe"
        else:
            where = ", ".join(f"{p}@{layer}" for p, layer in self.blocks)
            probe = f"probe on {where} ({'whole' if self.pcs == 0 else f'{self.pcs} PCs each'})"
        return f"{len(self.features)} scalar features, {probe}, C={self.C:g}"


def candidate_configs(fs: FeatureSet, layers: Sequence[int], Cs: Sequence[float] = DEFAULT_CS) -> list[ProbeConfig]:
    """Every candidate of a feature set: no probe (when it has scalars), and each probe of :data:`PROBE_PCS`."""
    out = [ProbeConfig(fs.features, (), float(C), 0) for C in Cs] if fs.features else []
    if fs.probes and layers:
        every = tuple((p, layer) for p in PROBE_POSITIONS for layer in layers)
        for k in PROBE_PCS:
            out += [ProbeConfig(fs.features, every, float(C), k) for C in (WHOLE_CS if k == 0 else Cs)]
    return out


@dataclass
class _PCA:
    mean: NDArray[np.float64]
    axes: NDArray[np.float64]  # k × d, unit rows
    scale: NDArray[np.float64]  # k, std of the projections
    identity: bool = False  # the whole block (axes = I)

    @classmethod
    def fit(cls, H: NDArray[np.float64], k: int) -> _PCA:
        randomized_svd = _sklearn("utils.extmath").randomized_svd

        mean = H.mean(axis=0)
        centred = H - mean
        k = max(1, min(k, min(centred.shape) - 1))
        _, s, vt = randomized_svd(centred, n_components=k, n_iter=4, random_state=0)
        scale = s / np.sqrt(max(H.shape[0] - 1, 1))
        return cls(mean=mean, axes=vt, scale=np.where(scale > 1e-12, scale, 1.0))

    @classmethod
    def whole(cls, H: NDArray[np.float64]) -> _PCA:
        """The identity "projection": every coordinate, standardised."""
        mean = H.mean(axis=0)
        scale = H.std(axis=0)
        return cls(mean=mean, axes=np.eye(H.shape[1]), scale=np.where(scale > 1e-12, scale, 1.0), identity=True)

    def transform(self, H: NDArray[np.float64]) -> NDArray[np.float64]:
        if self.identity:
            return (H - self.mean) / self.scale
        return ((H - self.mean) @ self.axes.T) / self.scale


@dataclass
class _Fitted:
    """A fitted candidate (in its standardised coordinates) that can predict and fold itself back."""

    config: ProbeConfig
    x_mean: NDArray[np.float64]
    x_scale: NDArray[np.float64]
    pcas: list[_PCA]
    coef: NDArray[np.float64]
    intercept: float
    feature_idx: list[int] = field(default_factory=list)

    def design(self, data: FitData) -> NDArray[np.float64]:
        parts = []
        if self.feature_idx:
            parts.append((data.X[:, self.feature_idx] - self.x_mean) / self.x_scale)
        for (pos, layer), pca in zip(self.config.blocks, self.pcas, strict=True):
            parts.append(pca.transform(data.block(pos, layer)))
        return np.hstack(parts)

    def predict(self, data: FitData) -> NDArray[np.float64]:
        z = self.design(data) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))

    def record(self) -> LogisticCalibrator:
        nf = len(self.feature_idx)
        probes = []
        offset = nf
        for (pos, layer), pca in zip(self.config.blocks, self.pcas, strict=True):
            k = pca.axes.shape[0]
            c = self.coef[offset : offset + k]
            offset += k
            weight = pca.axes.T @ (c / pca.scale)
            probes.append(ProbeBlock(position=pos, layer=layer, mean=as_plain(pca.mean), weight=as_plain(weight)))
        return LogisticCalibrator(
            features=self.config.features,
            mean=as_plain(self.x_mean) if nf else (),
            scale=as_plain(self.x_scale) if nf else (),
            coef=as_plain(self.coef[:nf]) if nf else (),
            probes=tuple(probes),
            intercept=float(self.intercept),
            C=self.config.C,
        )


def fit_config(config: ProbeConfig, data: FitData, *, pca_cache: dict | None = None) -> _Fitted:
    """Fit one candidate on ``data``."""
    LogisticRegression = _sklearn("linear_model").LogisticRegression

    idx = [data.features.index(f) for f in config.features]
    if idx:
        xs = data.X[:, idx]
        x_mean, x_scale = xs.mean(axis=0), xs.std(axis=0)
        x_scale = np.where(x_scale > 1e-12, x_scale, 1.0)
    else:
        x_mean = x_scale = np.zeros(0)
    pcas = []
    for pos, layer in config.blocks:
        key = (pos, layer, config.pcs)
        if pca_cache is not None and key in pca_cache:
            pcas.append(pca_cache[key])
        else:
            H = data.block(pos, layer)
            pca = _PCA.whole(H) if config.pcs == 0 else _PCA.fit(H, config.pcs)
            if pca_cache is not None:
                pca_cache[key] = pca
            pcas.append(pca)
    fitted = _Fitted(config, x_mean, x_scale, pcas, np.zeros(0), 0.0, idx)
    Z = fitted.design(data)
    lr = LogisticRegression(C=config.C, solver="lbfgs", max_iter=3000)
    lr.fit(Z, data.y.astype(int))
    fitted.coef = lr.coef_[0].astype(np.float64)
    fitted.intercept = float(lr.intercept_[0])
    return fitted


def _group_folds(
    groups: NDArray[np.int64], y: NDArray[np.float64], k: int, seed: int
) -> list[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """Grouped, roughly class-balanced folds (no group on both sides)."""
    StratifiedGroupKFold = _sklearn("model_selection").StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    k = min(k, n_groups)
    if k < 2:
        raise CalibrationError(
            f"the calibration answers fall into {n_groups} fold group(s); cross-validation needs at least 2 "
            "(give the data more titles or contexts)"
        )
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in splitter.split(np.zeros(len(y)), y.astype(int), groups)]


def _check_outcomes(y: NDArray[np.float64], where: str) -> None:
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if min(n_pos, n_neg) == 0:
        raise CalibrationError(
            f"all {y.size} answers in {where} are {'correct' if n_neg == 0 else 'wrong'}; calibration needs both "
            "outcomes — use harder or easier questions, or check the judge"
        )


def choose_config(configs: Sequence[ProbeConfig], data: FitData, *, inner_folds: int = 4, seed: int = 0) -> ProbeConfig:
    """The candidate with the lowest inner grouped-CV log-loss (ties → earlier, i.e. simpler, candidate)."""
    if len(configs) == 1:
        return configs[0]
    folds = _group_folds(data.groups, data.y, inner_folds, seed + 1)
    losses = np.zeros(len(configs))
    for tr, te in folds:
        train, test = data.subset(tr), data.subset(te)
        if min(train.y.sum(), train.y.size - train.y.sum()) == 0:
            continue
        cache: dict = {}
        for i, cfg in enumerate(configs):
            p = np.clip(fit_config(cfg, train, pca_cache=cache).predict(test), 1e-9, 1 - 1e-9)
            losses[i] -= float(np.sum(test.y * np.log(p) + (1 - test.y) * np.log(1 - p)))
    return configs[int(np.argmin(np.round(losses, 6)))]


@dataclass(frozen=True)
class NestedResult:
    """Out-of-fold confidences of a feature set under nested CV, and the candidate each outer fold chose."""

    name: str
    oof: NDArray[np.float64]
    chosen: tuple[ProbeConfig, ...]


def nested_cv(
    fs: FeatureSet,
    data: FitData,
    *,
    layers: Sequence[int],
    outer_folds: int = 5,
    inner_folds: int = 4,
    Cs: Sequence[float] = DEFAULT_CS,
    seed: int = 0,
    progress: object | None = None,
) -> NestedResult:
    """Out-of-fold confidences: in each outer fold, choose a candidate by inner CV on the rest, fit, predict."""
    _check_outcomes(data.y, "the calibration data")
    configs = candidate_configs(fs, layers, Cs)
    oof = np.full(data.y.shape[0], np.nan)
    chosen = []
    for tr, te in _group_folds(data.groups, data.y, outer_folds, seed):
        train = data.subset(tr)
        _check_outcomes(train.y, "a training fold")
        cfg = choose_config(configs, train, inner_folds=inner_folds, seed=seed)
        oof[te] = fit_config(cfg, train).predict(data.subset(te))
        chosen.append(cfg)
        if progress is not None and hasattr(progress, "update"):
            progress.update(1)
    return NestedResult(fs.name, oof, tuple(chosen))


def fit_domain(
    data: FitData,
    features: Sequence[str],
    blocks: Sequence[tuple[str, int]],
    *,
    heldout: NDArray[np.float64] | None = None,
    quantile: float = 0.99,
) -> DomainDescription:
    """A shrinkage (Ledoit–Wolf) Mahalanobis description of ``data``; edge from ``heldout`` distances.

    Without ``heldout`` distances the in-sample ones are used (which makes the edge tighter).
    """
    LedoitWolf = _sklearn("covariance").LedoitWolf

    idx = [data.features.index(f) for f in features]
    xs = data.X[:, idx]
    mean, scale = xs.mean(axis=0), xs.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    parts = [(xs - mean) / scale]
    hmeans, comps, res_mean, res_scale, residuals = [], [], [], [], []
    for pos, layer in blocks:
        H = data.block(pos, layer)
        pca = _PCA.fit(H, _DOMAIN_PCS)
        centred = H - pca.mean
        coords = centred @ pca.axes.T
        res = np.linalg.norm(centred - coords @ pca.axes, axis=1)
        hmeans.append(pca.mean)
        comps.append(pca.axes)
        parts.append(coords)
        rm, rs = float(res.mean()), float(res.std())
        res_mean.append(rm)
        res_scale.append(rs if rs > 1e-12 else 1.0)
        residuals.append(res)
    parts.append(np.column_stack([(r - m) / s_ for r, m, s_ in zip(residuals, res_mean, res_scale, strict=True)]))
    V = np.hstack(parts)
    precision = np.linalg.pinv(LedoitWolf().fit(V).covariance_)
    insample = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", V, precision, V), 0.0))
    dists = heldout if heldout is not None and heldout.size else insample
    qs = np.quantile(dists, np.linspace(0, 1, 101))
    edge = float(np.quantile(dists, quantile))
    return DomainDescription(
        features=tuple(features),
        mean=as_plain(mean),
        scale=as_plain(scale),
        blocks=tuple((p, int(layer)) for p, layer in blocks),
        hidden_mean=tuple(as_plain(m) for m in hmeans),
        components=tuple(as_plain(c) for c in comps),
        residual_mean=tuple(res_mean),
        residual_scale=tuple(res_scale),
        precision=as_plain(precision),
        edge=max(edge, 1e-9),
        edge_quantile=quantile,
        heldout_quantiles=as_plain(qs),
    )


def domain_distances(domain: DomainDescription, data: FitData) -> NDArray[np.float64]:
    """The domain distance of every answer in ``data``."""
    idx = [data.features.index(f) for f in domain.features]
    hidden = {b: data.block(*b) for b in domain.blocks}
    out = np.empty(data.y.shape[0])
    for i in range(out.size):
        out[i] = domain.distance(data.X[i, idx], {b: h[i] for b, h in hidden.items()})
    return out


def heldout_domain_figures(
    data: FitData,
    features: Sequence[str],
    blocks: Sequence[tuple[str, int]],
    *,
    folds: int = 5,
    seed: int = 0,
    quantile: float = 0.99,
) -> tuple[NDArray[np.float64], float]:
    """``(out-of-fold distances, held-out fire rate)``.

    Distances come from descriptions fitted on the other folds. The fire rate is honest: each
    outer fold's edge is the ``quantile`` of *inner* out-of-fold distances of its training part.
    """
    oof = np.full(data.y.shape[0], np.nan)
    fired = 0
    for tr, te in _group_folds(data.groups, data.y, folds, seed):
        train = data.subset(tr)
        inner = np.full(tr.size, np.nan)
        for itr, ite in _group_folds(train.groups, train.y, folds - 1 if folds > 2 else 2, seed + 1):
            inner[ite] = domain_distances(fit_domain(train.subset(itr), features, blocks), train.subset(ite))
        desc = fit_domain(train, features, blocks, heldout=inner, quantile=quantile)
        d = domain_distances(desc, data.subset(te))
        oof[te] = d
        fired += int(np.sum(d > desc.edge))
    return oof, fired / max(1, data.y.shape[0])
