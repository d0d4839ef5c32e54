"""open_review_queue: which store a URL or path opens, errors that name the URL without its password."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import gradguard.review
from gradguard.errors import MissingExtraError
from gradguard.review import (
    ReviewStoreError,
    SQLiteReviewQueue,
    default_review_db_path,
    open_review_queue,
)
from gradguard.review.urls import is_url, mask_url, sqlite_path_from_url

from .conftest import base_postgres_url

SECRET = "s3cr3t-Pa55word"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (f"postgresql://user:{SECRET}@db.example:5432/reviews", "postgresql://user:***@db.example:5432/reviews"),
        (f"postgres://user:{SECRET}@host/db?sslmode=require", "postgres://user:***@host/db?sslmode=require"),
        (f"postgresql://user:{SECRET}@[::1]:5432/db", "postgresql://user:***@[::1]:5432/db"),
        (f"postgresql://host/db?user=u&password={SECRET}", "postgresql://host/db?user=u&password=***"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        (f"postgresql://user:a/{SECRET}?#@host/db", "postgresql://user:***@host/db"),  # unencoded / ? #
        (f"postgresql://user:{SECRET}@host/db?password={SECRET}&x=1", "postgresql://user:***@host/db?password=***&x=1"),
        ("sqlite:////var/lib/review.sqlite3", "sqlite:////var/lib/review.sqlite3"),
        ("/plain/path:with@odd.sqlite3", "/plain/path:with@odd.sqlite3"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert SECRET not in mask_url(url)


def test_is_url_and_sqlite_paths() -> None:
    assert is_url("sqlite:///x") and is_url("postgresql://h/d") and not is_url("review.sqlite3")
    assert not is_url("/tmp/a://b")
    assert sqlite_path_from_url("sqlite:///rel/review.sqlite3") == Path("rel/review.sqlite3")
    assert sqlite_path_from_url("sqlite:////abs/review.sqlite3") == Path("/abs/review.sqlite3")
    with pytest.raises(ReviewStoreError, match="three slashes"):
        sqlite_path_from_url("sqlite://")


def test_sqlite_urls_and_paths_open_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_review_queue("sqlite:///rel/a.sqlite3") as q:
        assert isinstance(q, SQLiteReviewQueue) and q.path == Path("rel/a.sqlite3")
        assert q.url == "sqlite:///rel/a.sqlite3"
        item_id = q.enqueue("q", "a")
    assert (tmp_path / "rel" / "a.sqlite3").exists()
    with open_review_queue(f"sqlite:///{tmp_path}/rel/a.sqlite3") as q:  # absolute: four slashes
        assert q.url == f"sqlite:///{tmp_path}/rel/a.sqlite3" and q.get(item_id).question == "q"
    with open_review_queue(str(tmp_path / "rel" / "a.sqlite3")) as q:  # a plain path, as --db PATH always was
        assert isinstance(q, SQLiteReviewQueue) and q.get(item_id)
    with open_review_queue(tmp_path / "rel" / "a.sqlite3") as q:  # os.PathLike
        assert q.get(item_id)
    with open_review_queue("rel/a.sqlite3") as q:
        assert q.get(item_id)


def test_none_means_the_env_variable_or_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADGUARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GRADGUARD_REVIEW_DB", raising=False)
    with open_review_queue(None) as q:
        assert isinstance(q, SQLiteReviewQueue) and q.path == tmp_path / "cache" / "review.sqlite3"
    monkeypatch.setenv("GRADGUARD_REVIEW_DB", str(tmp_path / "env.sqlite3"))
    with open_review_queue() as q:
        assert isinstance(q, SQLiteReviewQueue) and q.path == tmp_path / "env.sqlite3"
    monkeypatch.setenv("GRADGUARD_REVIEW_DB", f"sqlite:///{tmp_path}/envurl.sqlite3")
    with open_review_queue() as q:
        assert isinstance(q, SQLiteReviewQueue) and q.path == tmp_path / "envurl.sqlite3"
    assert default_review_db_path() == tmp_path / "envurl.sqlite3"
    with SQLiteReviewQueue() as q:
        assert q.path == tmp_path / "envurl.sqlite3"
    monkeypatch.setenv("GRADGUARD_REVIEW_DB", f"postgresql://u:{SECRET}@127.0.0.1:1/db")
    with pytest.raises(ReviewStoreError, match="not a SQLite file; open it with open_review_queue") as info:
        default_review_db_path()
    assert SECRET not in str(info.value) and "u:***@127.0.0.1:1/db" in str(info.value)


def test_an_unknown_scheme_names_the_url_without_its_password() -> None:
    with pytest.raises(ReviewStoreError, match="unknown scheme 'mysql'") as info:
        open_review_queue(f"mysql://root:{SECRET}@localhost/reviews")
    message = str(info.value)
    assert SECRET not in message and "mysql://root:***@localhost/reviews" in message
    assert "postgresql://" in message and "sqlite:///" in message and "docs/review.md" in message
    with pytest.raises(ReviewStoreError, match="empty"):
        open_review_queue("  ")


def test_an_unreachable_server_names_the_url_without_its_password() -> None:
    pytest.importorskip("psycopg")
    url = f"postgresql://gradguard:{SECRET}@127.0.0.1:1/reviews?password={SECRET}&connect_timeout=3"
    with pytest.raises(ReviewStoreError) as info:
        open_review_queue(url)
    message = str(info.value)
    assert SECRET not in message
    assert "postgresql://gradguard:***@127.0.0.1:1/reviews" in message
    assert "check the server is running" in message and "docs/review.md" in message


def test_an_unopenable_sqlite_file_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ReviewStoreError, match="check the path is writable"):
        open_review_queue(f"sqlite:///{blocker}/review.sqlite3")


@pytest.mark.postgres
def test_a_wrong_password_names_the_url_without_it() -> None:
    url = base_postgres_url()
    head, _, tail = url.rpartition("@")
    wrong = head.rsplit(":", 1)[0] + f":{SECRET}@" + tail
    with pytest.raises(ReviewStoreError, match="could not open the review database") as info:
        open_review_queue(wrong)
    assert SECRET not in str(info.value) and ":***@" in str(info.value)


@pytest.mark.postgres
def test_both_postgres_schemes_open_postgres(postgres_url: str) -> None:
    from gradguard.review import PostgresReviewQueue

    for url in (postgres_url, "postgres://" + postgres_url.partition("://")[2]):
        with open_review_queue(url) as q:
            assert isinstance(q, PostgresReviewQueue)
            assert ":***@" in q.url and q.url in repr(q)
            password = postgres_url.partition("://")[2].split("@")[0].split(":")[1]
            assert password not in q.url and password not in repr(q)
            q.enqueue("q", "a")
            assert q.query().total >= 1


def test_the_package_imports_without_psycopg_and_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    assert gradguard.review.PostgresReviewQueue.__name__ == "PostgresReviewQueue"
    with pytest.raises(ReviewStoreError, match=r"pip install 'gradguard\[postgres\]'") as info:
        open_review_queue(f"postgresql://u:{SECRET}@127.0.0.1:1/db")
    assert isinstance(info.value, MissingExtraError) and info.value.extra == "postgres"
    assert SECRET not in str(info.value)
    with pytest.raises(AttributeError):
        gradguard.review.NoSuchThing  # noqa: B018


def test_postgres_tests_skip_without_a_server_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADGUARD_TEST_POSTGRES_URL", raising=False)
    monkeypatch.delenv("GRADGUARD_REQUIRE_POSTGRES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="postgres.sh"):
        base_postgres_url()
    monkeypatch.setenv("GRADGUARD_REQUIRE_POSTGRES", "1")
    with pytest.raises(
        pytest.fail.Exception, match="GRADGUARD_REQUIRE_POSTGRES=1 makes the PostgreSQL tests mandatory"
    ):
        base_postgres_url()
