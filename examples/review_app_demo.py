"""The review app on real answers: the embedded model answers RAG questions, a router holds the unsure ones.

Every held answer goes through the real pipeline — ``generate_and_score`` (per-token log-probabilities
and entropies from the scoring pass), a :class:`~gradguard.routing.Router` that first escalates to a
wider retrieval and then to human review, and :func:`~gradguard.review.human_review_target`, which
stores the exact messages, the task, model and profile, the route reason and the trail::

    python examples/review_app_demo.py --db /tmp/review.sqlite3          # fill a queue, print the held items
    export GRADGUARD_REVIEW_TOKEN=alice:$(python -c 'import secrets; print(secrets.token_urlsafe(24))')
    gradguard review serve --db /tmp/review.sqlite3                      # then sign in at http://127.0.0.1:8100

``--screenshot PATH`` also opens the first held item in headless Chromium (Debian ``chromium`` and
``chromium-driver``; ``bash .ci/browser.sh``) and saves the page: that is ``docs/images/review_item.png``.
Needs ``pip install -e '.[default-model,review-web]'`` (and ``selenium`` for the screenshot); nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
from pathlib import Path

from gradguard import GradScorer
from gradguard.result import ScoreResult
from gradguard.review import ReviewStore, human_review_target, open_review_queue
from gradguard.routing import Action, EscalationResult, Router, RoutingPolicy, Tier
from gradguard.tasks import builtin_task

#: A small document store: per question, the first-pass passages and the wider retrieval's extra ones.
DOCUMENTS: dict[str, tuple[str, str]] = {
    "What notice period applies when Acme terminates the support contract for convenience?": (
        "[1] acme_support_2025.pdf §12.1 — Either party may terminate this Agreement for convenience by giving "
        "the other party sixty (60) days' prior written notice.",
        "[2] acme_support_2025.pdf §12.2 — Either party may terminate for material breach if the breach remains "
        "uncured thirty (30) days after written notice of it.\n[3] acme_support_2025.pdf §14.3 — Prepaid fees are "
        "non-refundable except as stated in §12.4.",
    ),
    "Which warehouse ships orders placed after 4 pm on a Friday?": (
        "[1] logistics_faq.md — Orders placed before 2 pm ship the same day from the Leeds warehouse.",
        "[2] logistics_faq.md — Weekend orders are consolidated and ship on Monday from the warehouse with stock.",
    ),
    "How many vacation days does a new employee get in the first year?": (
        "[1] handbook_2026.pdf §4.1 — Full-time employees accrue 1.75 days of paid vacation per month worked.",
        "[2] handbook_2026.pdf §4.2 — Accrual starts on the first day of employment; unused days roll over "
        "up to a maximum of 5 days.",
    ),
    "What is the capital of France?": (
        "[1] geography.txt — Paris is the capital and most populous city of France.",
        "",
    ),
}


def build_router(scorer: GradScorer, store: ReviewStore, accept_at: float) -> Router:
    """Accept at ``accept_at``; from 0.3 retrieve more passages (once), below that or after it human review."""
    task = builtin_task("rag")

    def retrieve_more(question: str, answer: str, result: ScoreResult | None) -> EscalationResult:
        first, more = DOCUMENTS[question]
        context = f"{first}\n{more}".strip()
        again = scorer.generate_and_score(
            task.messages(question, context), max_new_tokens=task.max_new_tokens, task="rag"
        )
        return EscalationResult(answer=again.response, result=again)

    policy = RoutingPolicy(
        [
            Tier(accept_at, Action.ACCEPT),
            Tier(0.3, Action.ESCALATE, target="retrieve_more"),
            Tier(0.0, Action.ESCALATE, target="human"),
        ],
        abstain_text="This answer is waiting for a reviewer.",
    )
    targets = {"retrieve_more": retrieve_more, "human": human_review_target(store, metadata={"app": "demo"})}
    return Router(policy, targets=targets)


def fill(store: ReviewStore, accept_at: float) -> list[str]:
    """Answer every question with the embedded model and route it; the ids of the held items."""
    scorer = GradScorer.from_pretrained(task="rag")
    router = build_router(scorer, store, accept_at)
    task = builtin_task("rag")
    held: list[str] = []
    for question, (first, _) in DOCUMENTS.items():
        result = scorer.generate_and_score(task.messages(question, first), max_new_tokens=task.max_new_tokens)
        outcome = router.route(question, result.response, result)
        conf = "-" if result.confidence is None else f"{result.confidence:.3f}"
        print(f"{outcome.action.value:<8} confidence {conf}  {question}  ->  {result.response!r}")
        if outcome.review_id is not None:
            held.append(outcome.review_id)
    return held


def screenshot(store: ReviewStore, item_id: str, path: Path) -> None:
    """Sign in to the app in headless Chromium, open the item, expand its context and save the page."""
    from selenium.webdriver.common.by import By

    from gradguard.review.web import create_app
    from gradguard.review.web.testing import headless_chrome
    from gradguard.testing.server import serve_app_in_thread

    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as profile:
        browser = headless_chrome(profile)
        try:
            with serve_app_in_thread(create_app(store, {token: "alice"})) as url:
                browser.get(url + "/login")
                browser.find_element(By.ID, "token").send_keys(token)
                browser.find_element(By.CSS_SELECTOR, "form[action='/login'] button[type=submit]").click()
                browser.get(f"{url}/items/{item_id}")
                # show the conversation (system prompt and retrieved context), not the raw metadata
                browser.execute_script(
                    "document.querySelectorAll('details.messages, details.messages details')"
                    ".forEach(d => { d.open = true; }); window.scrollTo(0, 0);"
                )
                height = int(browser.execute_script("return document.documentElement.scrollHeight"))
                browser.set_window_size(1360, min(height + 40, 4000))
                path.parent.mkdir(parents=True, exist_ok=True)
                browser.save_screenshot(str(path))
        finally:
            browser.quit()


def main(argv: list[str] | None = None) -> int:
    """Fill a review queue from the embedded model's answers; optionally screenshot the first held item."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="review-demo.sqlite3", help="review queue URL or path (default %(default)s)")
    parser.add_argument(
        "--accept-at", type=float, default=0.8, help="accept answers at this confidence (default %(default)s)"
    )
    parser.add_argument("--screenshot", type=Path, default=None, help="save the first held item's page here (PNG)")
    args = parser.parse_args(argv)
    with open_review_queue(args.db) as store:
        held = fill(store, args.accept_at)
        print(f"{len(held)} of {len(DOCUMENTS)} answers held for review in {store.url}")
        if args.screenshot is not None:
            if not held:
                print("nothing was held; raise --accept-at to hold more", file=sys.stderr)
                return 1
            screenshot(store, held[0], args.screenshot)
            print(f"saved {args.screenshot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
