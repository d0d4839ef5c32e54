"""The evaluation harness (generate, score and judge each question, cached per question) and its report.

See ``docs/evaluation.md``.
"""
