"""Request ids and the request log: X-Request-ID accepted (when sane) or made, returned, logged once per request
with method, path, status and duration, and stored on the job a request creates (its events carry it)."""

from __future__ import annotations

import logging
import re

import pytest

from app.db import session_scope
from app.logs import ContextFilter, logging_config
from app.models import Job
from tests.app.conftest import Api

LINE = re.compile(r"method=(\S+) path=(\S+) status=(\d+) duration_ms=([0-9.]+)")


def _access(caplog: pytest.LogCaptureFixture) -> list[tuple[str, re.Match]]:
    return [(r.request_id, LINE.fullmatch(r.getMessage())) for r in caplog.records if r.name == "app.access"]


def test_request_id_is_returned_logged_and_stored_on_the_job(alice: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(ContextFilter())  # as the configured handler does (app.logs.logging_config)
    ds = alice.make_dataset(3)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="app.access"):
        r = alice.post(
            f"/datasets/{ds['id']}/jobs", json={"epochs": 1}, headers={**alice.headers, "X-Request-ID": "req-42.a"}
        )
    assert r.status_code == 202 and r.headers["x-request-id"] == "req-42.a"
    [(rid, line)] = _access(caplog)
    assert rid == "req-42.a" and line is not None
    assert line.group(1, 2, 3) == ("POST", f"/datasets/{ds['id']}/jobs", "202") and float(line.group(4)) > 0
    with session_scope() as session:
        assert session.get(Job, r.json()["id"]).request_id == "req-42.a"
    events = alice.get(f"/jobs/{r.json()['id']}/events").json()["data"]
    assert events[0]["data"]["request_id"] == "req-42.a"


@pytest.mark.parametrize("sent", [None, "", "has space", "x" * 129, "semi;colon"])
def test_a_missing_or_unusable_request_id_is_replaced(alice: Api, caplog, sent: str | None) -> None:
    caplog.handler.addFilter(ContextFilter())
    headers = {} if sent is None else {"X-Request-ID": sent}
    with caplog.at_level(logging.INFO, logger="app.access"):
        r = alice.client.get("/healthz", headers=headers)
    rid = r.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid) and rid != sent
    assert [(i, m.group(1, 2, 3)) for i, m in _access(caplog)] == [(rid, ("GET", "/healthz", "200"))]


def test_errors_are_logged_with_their_status_and_carry_the_id(alice: Api, caplog) -> None:
    caplog.handler.addFilter(ContextFilter())
    with caplog.at_level(logging.INFO, logger="app.access"):
        r = alice.client.get("/jobs/nope", headers={"X-Request-ID": "e1"})  # no key: 401
    assert r.status_code == 401 and r.headers["x-request-id"] == "e1"
    assert [(i, m.group(3)) for i, m in _access(caplog)] == [("e1", "401")]


def test_logging_config_formats_the_context() -> None:
    import logging.config

    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    logging.config.dictConfig(logging_config("INFO"))
    try:
        handler = root.handlers[0]
        record = logging.LogRecord("app.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
        handler.filter(record)
        text = handler.format(record)
        assert re.fullmatch(r"\S+Z INFO app\.x \[request_id=- job_id=-\] hello you", text), text
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
