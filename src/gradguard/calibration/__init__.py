"""Correctness judges, calibrators (scores → P(correct)), risk-controlled thresholds and metrics.

See ``docs/calibration.md``. Applying a shipped calibration (:mod:`gradguard.calibration.model`) needs numpy
only; fitting, thresholds, metrics and plots need scikit-learn, scipy and matplotlib, installed by
``pip install 'gradguard[calibrate]'`` (a :class:`~gradguard.errors.MissingExtraError` says so when they are missing).
"""

from gradguard.calibration.thresholds import ThresholdResult, choose_threshold

__all__ = ["ThresholdResult", "choose_threshold"]
