"""The Celery client configuration: the embedded SQLite broker's transport and its poll, Redis's options."""

from __future__ import annotations

import pytest
from celery import Celery
from kombu import Connection
from pydantic import ValidationError

from app import embedded_broker
from app.config import Settings
from app.queue import celery_config


def test_embedded_broker_uses_the_short_poll_and_carries_messages(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TAGSIFT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TAGSIFT_BROKER_POLL_SECONDS", "0.05")
    settings = Settings()
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    conf = celery_config(settings)
    assert conf["broker_url"] == f"sqlite:///{tmp_path / 'broker.sqlite'}"
    assert conf["broker_transport"] == embedded_broker.TRANSPORT
    assert conf["broker_transport_options"] == {"polling_interval": 0.05}

    app = Celery("test-embedded-broker")
    app.conf.update(conf)
    with app.connection_for_write() as conn:
        assert type(conn.transport) is embedded_broker.Transport
        assert conn.transport.polling_interval == 0.05  # kombu's own default is 1 s
        queue = conn.SimpleQueue("poll-test")
        queue.put({"job": "j1"})  # the engine was created without polling_interval (create_engine refuses it)
        message = queue.get(timeout=5)
        assert message.payload == {"job": "j1"}
        message.ack()
        queue.close()
    assert conn.transport.client.transport_options == {"polling_interval": 0.05}  # left as it was given
    assert (tmp_path / "broker.sqlite").is_file()


def test_other_brokers_are_left_to_kombu(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TAGSIFT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TAGSIFT_BROKER_URL", "redis://127.0.0.1:6379/0")
    conf = celery_config(Settings())
    assert conf["broker_url"] == "redis://127.0.0.1:6379/0" and conf["broker_transport"] is None
    assert conf["broker_transport_options"]["visibility_timeout"] == Settings().broker_visibility_timeout
    assert type(Connection(conf["broker_url"]).transport).__module__ == "kombu.transport.redis"


@pytest.mark.parametrize("bad", ["0", "-1", "61", "soon"])
def test_broker_poll_must_be_a_positive_number_of_seconds(monkeypatch, bad: str) -> None:
    monkeypatch.setenv("TAGSIFT_BROKER_POLL_SECONDS", bad)
    with pytest.raises(ValidationError, match="broker_poll_seconds"):
        Settings()
