"""Fixtures of the review-store tests: every store test runs on SQLite and on PostgreSQL.

The PostgreSQL runs need a server: ``eval "$(bash .ci/postgres.sh)"`` sets ``$GRADGUARD_TEST_POSTGRES_URL``.
Without it they are skipped, unless ``$GRADGUARD_REQUIRE_POSTGRES=1`` (then they fail). Each test gets a
fresh schema of its own (dropped afterwards), selected through the URL's ``options=-csearch_path=...``,
so child processes given the URL see the same tables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from gradguard.review import open_review_queue
from gradguard.review.sql_store import SQLReviewStore

POSTGRES_URL_ENV = "GRADGUARD_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "GRADGUARD_REQUIRE_POSTGRES"
STORES = ("sqlite", "postgres")


def with_search_path(url: str, schema: str) -> str:
    """``url`` with ``options=-csearch_path=<schema>`` added to its query string."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def base_postgres_url() -> str:
    """``$GRADGUARD_TEST_POSTGRES_URL``; skips the test when unset (fails under ``$GRADGUARD_REQUIRE_POSTGRES=1``)."""
    url = os.environ.get(POSTGRES_URL_ENV)
    required = os.environ.get(REQUIRE_POSTGRES_ENV) == "1"
    if not url:
        message = f'${POSTGRES_URL_ENV} is not set; run eval "$(bash .ci/postgres.sh)" for a test server'
        if required:
            pytest.fail(f"{message} (${REQUIRE_POSTGRES_ENV}=1 makes the PostgreSQL tests mandatory)")
        pytest.skip(message)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if required:
            pytest.fail("psycopg is not installed; pip install 'gradguard[postgres]'")
        pytest.skip("psycopg is not installed; pip install 'gradguard[postgres]'")
    return url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The test server's URL, on a fresh schema of this test's own (dropped afterwards)."""
    import psycopg

    url = base_postgres_url()
    schema = f"gg_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(url, schema)
    finally:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=[pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a fresh, empty store lives: a SQLite file path, or a PostgreSQL URL on a fresh schema."""
    if request.param == "sqlite":
        return str(tmp_path / "review.sqlite3")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[SQLReviewStore]:
    """An open, empty store (closed afterwards), SQLite or PostgreSQL."""
    opened = open_review_queue(store_url)
    assert isinstance(opened, SQLReviewStore)
    with opened:
        yield opened
