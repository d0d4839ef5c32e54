"""``python -m gradguard.review list|show|resolve``: the review CLI without the top-level ``gradguard``."""

from gradguard.review.cli import main

raise SystemExit(main())
