"""Correctness judges, calibrators (scores → P(correct)), risk-controlled thresholds and metrics.

See ``docs/calibration.md``. Submodules import scikit-learn/scipy only when fitting or testing.
"""

from gradguard.calibration.thresholds import ThresholdResult, choose_threshold

__all__ = ["ThresholdResult", "choose_threshold"]
