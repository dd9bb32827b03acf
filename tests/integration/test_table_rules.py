"""The database refuses rows no tracker could handle, for plain SQL too; rows that broke a rule
before it existed are ended or kept, never lost; unpollable rows are reported and expire; every
row gets a deadline, polled or not."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text, update
from sqlalchemy.exc import DBAPIError

from jobtracker.models import ProviderState, TrackedJob, utcnow
from tests.drive import step
from worker.catalogue.table import PROVIDERS
from worker.db import dispose_engines, make_engine, session_scope
from worker.errors import UnsafeCallbackURL
from worker.flow import tick
from worker.flow.enqueue import track
from worker.inspection.queries import stats
from worker.runtime.migrate import downgrade, upgrade
from worker.settings import REGION_RE, Settings
from worker.webhooks.urls import URL_SHAPE, validate_callback_url

INSERT = "INSERT INTO tracked_jobs (kind, region, job_id, callback_url, metadata) VALUES "


@pytest.fixture
def engine(db_url: str) -> Engine:
    return make_engine(db_url)


@pytest.fixture
def shared_engine(module_db_url: str) -> Iterator[Engine]:
    """The module's database, for statements that are rolled back (see ``refused_then_undone``)."""
    engine = make_engine(module_db_url)
    yield engine
    engine.dispose()


def refused(engine: Engine, sql: str) -> bool:
    try:
        with engine.begin() as conn:
            conn.execute(text(sql))
    except DBAPIError as exc:
        # The message names the rule (or the column's length, which VARCHAR checks itself).
        assert "ck_tracked_jobs_" in str(exc) or "too long" in str(exc), exc
        return True
    return False


def refused_then_undone(engine: Engine, sql: str) -> bool:
    """Whether the database refuses ``sql``; a statement it accepts is rolled back, so the
    database is left as it was (the rules are checked per statement, not at commit)."""
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            conn.execute(text(sql))
        except DBAPIError as exc:
            assert "ck_tracked_jobs_" in str(exc) or "too long" in str(exc), exc
            return True
        finally:
            transaction.rollback()
    return False


def row(kind: str = "image_animate", region: str = "ap-guangzhou", job_id: str = "j", *,
        url: str | None = None, metadata: str = "{}") -> str:  # fmt: skip
    callback = "NULL" if url is None else "'" + url.replace("'", "''") + "'"
    return INSERT + f"('{kind}', '{region}', '{job_id}', {callback}, '{metadata}')"


@pytest.mark.parametrize(
    "sql",
    [
        row(kind="video_stylization"),
        row(metadata="[1, 2]"),
        row(metadata='"text"'),
        row(metadata="null"),
        row(url="ftp://example.com/x"),
        row(url="http://"),
        row(url="javascript:alert(1)"),
        row(url="https://example.com/a b"),
        row(region="AP-guangzhou"),
        row(region="guangzhou"),
        row(region="ap--guangzhou"),
        row(region="ap-guangzhou-"),
        row(region="a1-x"),
        row(job_id="has space"),
        row(job_id="tab\tinside"),
    ],
)
def test_a_plain_sql_insert_that_breaks_a_rule_is_refused(shared_engine: Engine, sql: str) -> None:
    assert refused_then_undone(shared_engine, sql)
    with shared_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM tracked_jobs")).scalar_one() == 0


def test_plain_sql_inserts_within_the_rules_pass(engine: Engine) -> None:
    for n, kind in enumerate(PROVIDERS):
        defaults = f"INSERT INTO tracked_jobs (kind, job_id) VALUES ('{kind}', 'defaults-{n}')"
        assert not refused(engine, defaults)
    assert not refused(engine, row(region="ap-shanghai-fsi", job_id="a", url="https://h/x?y=1#z"))
    assert not refused(engine, row(region="na-siliconvalley", job_id="b", url="HTTP://h:8080"))
    assert not refused(engine, row(job_id="c", metadata='{"order": 42}'))
    # An update of a rule's column is checked too.
    assert refused(engine, "UPDATE tracked_jobs SET kind = 'nope' WHERE job_id = 'a'")


@pytest.mark.parametrize(
    "region",
    ["ap-guangzhou", "na-siliconvalley", "ap-shanghai-fsi", "eu-frankfurt", "ab-c", "ab-1-2-3",
     "ab-1-2-3-4", "a-b", "ab", "ab-", "-ab", "ab--c", "Ab-c", "ab-C", "ab_c", "ab-c d", "1b-c",
     "abc1-x", "ab-" + "x" * 70],
)  # fmt: skip
def test_the_region_rule_agrees_with_the_enqueue_validator(
    shared_engine: Engine, region: str
) -> None:
    """SQLite has no regular expressions: its spelled-out rule must say what REGION_RE says."""
    ok = bool(REGION_RE.match(region)) and len(region) <= 64
    assert refused_then_undone(shared_engine, row(region=region)) is not ok


def test_rows_that_broke_a_rule_before_it_existed_are_ended_or_kept(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The upgrade neither fails nor drops them: an active one is ended as failed with the
    rule's name (it could never be polled or updated), a finished one stays as it is; both
    stay readable, and the upgrade's log names them."""
    dispose_engines()
    settings = Settings.from_env({"JOBTRACKER_DATABASE_URL": db_url}, cwd=tmp_path)
    downgrade("0001", settings)  # a database from before the rules
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text(row(kind="retired_kind", job_id="active-bad-kind")))
        conn.execute(text(row(job_id="active-bad-metadata", metadata="[1]")))
        conn.execute(text(row(region="Bad Region", job_id="done-bad-region")))
        conn.execute(text(
            "UPDATE tracked_jobs SET status = 'succeeded', finished_at = CURRENT_TIMESTAMP "
            "WHERE job_id = 'done-bad-region'"
        ))  # fmt: skip
        conn.execute(text(row(job_id="fine")))
    caplog.set_level(logging.WARNING, logger="jobtracker.migrations")
    upgrade("head", settings)
    with engine.connect() as conn:
        got = {
            job_id: (status, error_code)
            for job_id, status, error_code in conn.execute(
                text("SELECT job_id, status, error_code FROM tracked_jobs")
            )
        }
        history = conn.execute(
            text("SELECT count(*) FROM job_transitions WHERE reason LIKE 'ck_tracked_jobs_%'")
        ).scalar_one()
    engine.dispose()
    assert got == {
        "active-bad-kind": ("failed", "Tracker.InvalidRow"),
        "active-bad-metadata": ("failed", "Tracker.InvalidRow"),
        "done-bad-region": ("succeeded", None),
        "fine": ("pending", None),
    }
    assert history == 2
    logged = caplog.text
    assert "ck_tracked_jobs_kind_known" in logged and "ck_tracked_jobs_region_name" in logged
    assert "1 finished row(s) break it" in logged


def test_a_row_inserted_while_its_provider_is_paused_expires_at_its_deadline(
    db_url: str, tmp_path: Path, advance_clock: Callable[[float], None]
) -> None:
    """Its deadline counts from created_at although it is never polled."""
    settings = Settings.from_env(
        {"JOBTRACKER_DATABASE_URL": db_url, "JOBTRACKER_JOB_DEADLINE": "1"}, cwd=tmp_path
    )
    later = utcnow() + timedelta(hours=1)
    with session_scope(settings) as session:
        session.add(ProviderState(kind="image_animate", paused=True, paused_at=utcnow(),
                                  paused_reason="AuthFailure", next_probe_at=later))  # fmt: skip
        session.execute(text(row(job_id="sql-row")))
    step(settings)
    with session_scope(settings) as session:
        job = session.execute(select(TrackedJob)).scalar_one()
        assert job.deadline_at is not None and job.status == "pending"
        assert job.deadline_at == job.created_at + timedelta(seconds=1)
    advance_clock(1.2)  # past its deadline
    step(settings)
    with session_scope(settings) as session:
        job = session.execute(select(TrackedJob)).scalar_one()
    assert (job.status, job.error_code, job.polls) == ("expired", "Tracker.DeadlineExceeded", 0)


def test_rows_no_provider_polls_are_reported_and_expire(
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    """A kind the database still allows but this tracker no longer polls (a retired provider):
    the tick says so (log, stats) and the rows expire at their deadline instead of waiting."""
    settings = Settings.from_env(
        {"JOBTRACKER_DATABASE_URL": db_url, "JOBTRACKER_JOB_DEADLINE": "1"}, cwd=tmp_path
    )
    track("video_face_fusion", "orphan-1", settings=settings)
    track("video_face_fusion", "orphan-2", settings=settings)
    # Put the table back as it was, order included (monkeypatch.delitem would re-add the kind
    # last, and the order of kinds is what users see in listings).
    saved = dict(PROVIDERS)
    request.addfinalizer(lambda: (PROVIDERS.clear(), PROVIDERS.update(saved)))
    del PROVIDERS["video_face_fusion"]
    monkeypatch.setattr(tick, "_warned_at", {})  # warned once per process and kind
    caplog.set_level(logging.WARNING)
    step(settings)
    assert "2 active job(s) of kind 'video_face_fusion' can never be polled" in caplog.text
    with session_scope(settings) as session:
        assert stats(session, now=utcnow())["unpollable"] == {"video_face_fusion": 2}
        session.execute(update(TrackedJob).values(deadline_at=utcnow() - timedelta(seconds=1)))
    step(settings)
    with session_scope(settings) as session:
        statuses = set(session.execute(select(TrackedJob.status)).scalars())
        assert stats(session, now=utcnow())["unpollable"] == {}
    assert statuses == {"expired"}


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pw@internal/",
        "https://token@hooks.example.com/x",
        "http:///no-host",
        "http://[::1",
        "http://[::1]x/",
        "http://a[::1]/",
        "http://h:123456/",
        "http://h:8:9/",
        "http://:80/",
    ],
)
def test_both_backends_refuse_callback_urls_with_user_info_or_no_usable_host(
    shared_engine: Engine, url: str
) -> None:
    """SQLite used to check only the scheme and blanks (and PostgreSQL took ``http://[::1``)."""
    assert refused_then_undone(shared_engine, row(url=url.replace(":", r"\:")))


def _url_corpus(count: int) -> list[str]:
    """Seeded strings near the rule's edges: schemes, brackets, colons, @, blanks, delimiters."""
    rnd = random.Random(17)
    alphabet = "hH tps:/[]@?#.0189aAfFgZé\t\x0b%-"
    corpus = []
    for _ in range(count):
        head = rnd.choice(["http://", "https://", "HTTPS://", "http:/", ""])
        corpus.append(head + "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12))))
    return corpus


def test_the_callback_url_rule_is_the_same_on_both_backends_and_in_python(
    shared_engine: Engine,
) -> None:
    """Each INSERT's verdict is URL_SHAPE's (what the validator's finer checks build on), and
    nothing the validator accepts is refused by the table (it would fail an enqueue)."""
    corpus = _url_corpus(1500)
    wrong = []
    with shared_engine.connect() as conn:
        for n, url in enumerate(corpus):
            expected = bool(URL_SHAPE.fullmatch(url))
            try:
                stored = validate_callback_url(url)
            except UnsafeCallbackURL:
                pass
            else:
                assert URL_SHAPE.fullmatch(stored), url
            conn.execute(text("SAVEPOINT one"))
            try:
                conn.execute(
                    text(
                        "INSERT INTO tracked_jobs (kind, job_id, callback_url) "
                        "VALUES ('image_animate', :job_id, :url)"
                    ),
                    {"job_id": f"corpus-{n}", "url": url},
                )
                accepted = True
            except DBAPIError as exc:
                assert "ck_tracked_jobs_callback_url_http" in str(exc), exc
                accepted = False
            conn.execute(text("ROLLBACK TO SAVEPOINT one"))
            if accepted is not expected:
                wrong.append((url, accepted))
        conn.rollback()
    assert not wrong, wrong[:10]
    assert 100 < sum(bool(URL_SHAPE.fullmatch(u)) for u in corpus) < 1400  # both sides tried


def test_the_upgrade_ends_active_rows_whose_callback_url_breaks_the_new_rule(
    db_url: str, tmp_path: Path
) -> None:
    dispose_engines()
    settings = Settings.from_env({"JOBTRACKER_DATABASE_URL": db_url}, cwd=tmp_path)
    downgrade("0006", settings)
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text(row(job_id="bracket", url="http://[::1")))  # both took it
        conn.execute(text(row(job_id="fine", url=r"http://[::1]\:8080/x")))
    upgrade("head", settings)
    with engine.connect() as conn:
        got = {
            job_id: status
            for job_id, status in conn.execute(text("SELECT job_id, status FROM tracked_jobs"))
        }
    engine.dispose()
    assert got == {"bracket": "failed", "fine": "pending"}
