"""benchmarks/bench_review_enqueue.py runs, verifies, and writes its figures (a small run on each store)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gradguard.review import open_review_queue

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_review_enqueue.py"


def test_bench_review_enqueue_small_run(store_url: str, tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--db", store_url, "--writers", "2", "--items", "5", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "items/s" in done.stdout and "p95" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["items_total"] == 10 and figures["verified"] == {"lost": 0, "count_delta": 10}
    assert len(figures["items_per_s_per_writer"]) == 2 and figures["latency_ms"]["p50"] > 0
    assert "***" in figures["db"] or figures["db"].startswith("sqlite:///")
    with open_review_queue(store_url) as store:
        assert store.query().total == 0  # the benchmark deletes its items unless --keep
