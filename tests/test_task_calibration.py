"""Task calibration: nested grouped CV, hidden-state probes folded back to the hidden space, domain flag."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradguard.calibration.fit import ABLATION, fit_data_from_records, fit_task_calibration
from gradguard.calibration.metrics import auroc
from gradguard.calibration.model import (
    DomainDescription,
    IsotonicCalibrator,
    LogisticCalibrator,
    ProbeBlock,
    predict,
    required_layers,
)
from gradguard.calibration.probe_fit import (
    CalibrationError,
    FeatureSet,
    ProbeConfig,
    _group_folds,
    fit_config,
    fit_domain,
)
from gradguard.result import HIDDEN_POSITIONS, HiddenStates
from gradguard.scores import FEATURES
from gradguard.tasks import BUILTIN_TASKS
from gradguard.testing.calibration import SYNTHETIC_LAYERS, make_task_calibration, synthetic_records
from gradguard.testing.results import make_score_result


def _with_hidden(record):  # type: ignore[no-untyped-def]
    return record.result.model_copy(update={"hidden": record.hidden_states()})


# -- the numpy predictor against hand-computed values ------------------------------------------------


def test_logistic_with_probe_is_the_sigmoid_of_the_hand_computed_logit() -> None:
    cal = LogisticCalibrator(
        features=("log_hybridgrad", "mean_nll"),
        mean=(-5.0, 1.0),
        scale=(2.0, 0.5),
        coef=(-1.0, 0.5),
        probes=(ProbeBlock(position="answer_mean", layer=3, mean=(1.0, 0.0), weight=(2.0, -1.0)),),
        intercept=0.25,
        C=1.0,
    )
    h = {p: np.zeros((2, 2)) for p in HIDDEN_POSITIONS}
    h["answer_mean"] = np.array([[9.0, 9.0], [2.0, 3.0]])  # layer 3 is the second row
    result = make_score_result(hybridgrad=math.exp(-3.0), mean_nll=2.0, hidden=HiddenStates(layers=(2, 3), states=h))
    # z = -1·(-3+5)/2 + 0.5·(2−1)/0.5 + [2,−1]·([2,3]−[1,0]) + 0.25 = −1 + 1 + (2 − 3) + 0.25 = −0.75
    expected = 1 / (1 + math.exp(0.75))
    assert predict(cal, None, result).confidence == pytest.approx(expected, rel=1e-12)


def test_missing_hidden_states_or_unscored_answers_give_no_confidence() -> None:
    cal = LogisticCalibrator(
        probes=(ProbeBlock(position="prompt_last", layer=1, mean=(0.0,), weight=(1.0,)),), intercept=0.0, C=1.0
    )
    assert predict(cal, None, make_score_result()).confidence is None  # no hidden states kept
    assert predict(cal, None, make_score_result(empty=True)).confidence is None
    iso = IsotonicCalibrator(x=(-8.0, -2.0), y=(0.9, 0.1))
    assert predict(iso, None, make_score_result(hybridgrad=math.exp(-5.0))).confidence == pytest.approx(0.5)
    assert predict(iso, None, make_score_result(empty=True)).confidence is None


def test_required_layers_are_the_probe_and_domain_layers() -> None:
    cal = make_task_calibration()
    layers = required_layers(cal.calibrator, cal.domain)
    assert set(layers) <= set(SYNTHETIC_LAYERS) and layers


# -- fitting ---------------------------------------------------------------------------------------------


def test_folded_probe_record_predicts_exactly_what_the_fitted_model_predicts() -> None:
    records = synthetic_records(120)
    data, _ = fit_data_from_records(records, BUILTIN_TASKS["closed-qa"])
    for pcs in (4, 0):
        cfg = ProbeConfig(FEATURES, (("prompt_last", 2), ("answer_mean", 3)), 0.1, pcs)
        fitted = fit_config(cfg, data)
        record = fitted.record()
        direct = fitted.predict(data)
        applied = [predict(record, None, _with_hidden(r)).confidence for r in records]
        # hidden states are stored as float16 in both paths, so the two agree to float precision
        assert np.allclose(direct, applied, rtol=1e-9, atol=1e-12)


def test_group_folds_never_split_a_group() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 7)
    y = rng.integers(0, 2, size=groups.size).astype(float)
    for tr, te in _group_folds(groups, y, 5, seed=0):
        assert not set(groups[tr]) & set(groups[te])


def test_nested_cv_finds_the_planted_signal_and_the_probe_helps() -> None:
    cal = make_task_calibration()
    assert set(cal.ablation) == {fs.name for fs in ABLATION}
    assert cal.cv.auroc is not None and cal.cv.auroc > 0.75
    assert cal.ablation["hidden-state probe"].auroc > 0.7
    assert cal.n == 240 and len(cal.holdout_confidence) == 240
    assert auroc(np.asarray(cal.holdout_confidence), np.asarray(cal.holdout_correct)) == pytest.approx(cal.cv.auroc)
    for name, gain in cal.gains.items():
        lo, hi = gain.ci
        assert lo <= gain.diff <= hi, name


def test_domain_flag_fires_rarely_in_domain_and_on_shifted_answers() -> None:
    cal = make_task_calibration()
    assert cal.domain is not None and cal.domain_fire_rate is not None
    assert cal.domain_fire_rate <= 0.06
    inside = [predict(cal.calibrator, cal.domain, _with_hidden(r)) for r in synthetic_records(100, seed=7)]
    outside = [predict(cal.calibrator, cal.domain, _with_hidden(r)) for r in synthetic_records(100, seed=8, shift=2.0)]
    assert np.mean([p.in_domain for p in inside]) >= 0.9
    assert np.mean([p.in_domain is False for p in outside]) >= 0.9
    assert all(0.0 <= p.percentile <= 100.0 for p in inside + outside)


def test_domain_distance_is_the_mahalanobis_distance_for_a_known_covariance() -> None:
    desc = DomainDescription(
        features=("mean_nll",),
        mean=(1.0,),
        scale=(2.0,),
        blocks=(("prompt_last", 0),),
        hidden_mean=((0.0, 0.0),),
        components=(((1.0, 0.0),),),
        residual_mean=(3.0,),
        residual_scale=(2.0,),
        precision=((1.0, 0.0, 0.0), (0.0, 4.0, 0.0), (0.0, 0.0, 1.0)),
        edge=3.0,
        heldout_quantiles=(0.0, 1.0, 2.0),
    )
    # v = [(5−1)/2, 1·(0.5−0), (‖(0, 7)‖ − 3)/2] = [2, 0.5, 2]; d² = 4 + 4·0.25 + 4 = 9
    assert desc.distance(np.array([5.0]), {("prompt_last", 0): np.array([0.5, 7.0])}) == pytest.approx(3.0)
    assert desc.percentile(1.0) == pytest.approx(50.0)


def test_fit_domain_edge_is_the_heldout_quantile() -> None:
    data, _ = fit_data_from_records(synthetic_records(150), BUILTIN_TASKS["closed-qa"])
    heldout = np.linspace(0.0, 10.0, 101)
    desc = fit_domain(data, FEATURES, [("prompt_last", 2)], heldout=heldout)
    assert desc.edge == pytest.approx(9.9)
    assert len(desc.components[0]) == 16 and len(desc.components[0][0]) == 32


# -- bad input ---------------------------------------------------------------------------------------------


def test_all_answers_right_or_all_wrong_is_a_clear_error() -> None:
    records = synthetic_records(40)
    right = [r.model_copy(update={"result": r.result.model_copy(update={"response": "alpha"})}) for r in records]
    wrong = [r.model_copy(update={"result": r.result.model_copy(update={"response": "beta"})}) for r in records]
    task = BUILTIN_TASKS["closed-qa"]
    with pytest.raises(CalibrationError, match=r"all 40 scored answers in synthetic.jsonl are correct.*both"):
        fit_task_calibration(right, task, data_path="data/synthetic.jsonl", data_sha256=None, max_new_tokens=8)
    with pytest.raises(CalibrationError, match="are wrong"):
        fit_task_calibration(wrong, task, data_path="synthetic.jsonl", data_sha256=None, max_new_tokens=8)


def test_a_single_fold_group_cannot_be_cross_validated() -> None:
    records = synthetic_records(60, groups=1)
    with pytest.raises(CalibrationError, match="fold group"):
        fit_task_calibration(
            records,
            BUILTIN_TASKS["closed-qa"],
            data_path="x.jsonl",
            data_sha256=None,
            max_new_tokens=8,
            feature_sets=(FeatureSet("gradients", ("log_hybridgrad",), False),),
        )


def test_records_without_hidden_states_fit_without_a_probe() -> None:
    records = [
        r.model_copy(update={"hidden": None, "hidden_layers": (), "hidden_d": None}) for r in synthetic_records(150)
    ]
    report = fit_task_calibration(
        records, BUILTIN_TASKS["closed-qa"], data_path="x.jsonl", data_sha256=None, max_new_tokens=8, folds=3, n_boot=20
    )
    cal = report.calibration
    assert isinstance(cal.calibrator, LogisticCalibrator) and not cal.calibrator.probes
    assert cal.domain is None and "hidden-state probe" not in cal.ablation
