"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, polled more often than kombu's default.

kombu's virtual transports have no push: an idle consumer asks the database for a message, and when there is none
sleeps ``polling_interval`` (kombu's default: 1 s) before asking again. On the embedded default every job waited
for that sleep (about 1-2 s between ``POST /jobs`` and the worker's claim). ``TAGSIFT_BROKER_POLL_SECONDS`` sets it
here; an empty poll is one indexed ``SELECT`` on a small SQLite table.

kombu's own ``transport_options`` cannot carry ``polling_interval`` for this transport: its channel hands every
option it does not know to ``sqlalchemy.create_engine``, which refuses unknown keyword arguments. This channel
removes it first. Celery selects this class with ``broker_transport`` (``app.queue.celery_config``): a transport
named in the broker URL itself can only be one of kombu's aliases.
"""

from __future__ import annotations

from kombu.transport import sqlalchemy as kombu_sqla

TRANSPORT = "app.embedded_broker:Transport"
URL_PREFIX = "sqla+"  # the prefix of kombu's SQLAlchemy transport in a broker URL (``sqla+sqlite:///...``)
OPTIONS_NOT_FOR_THE_ENGINE = ("polling_interval",)


class Channel(kombu_sqla.Channel):
    def _engine_from_config(self):
        options = self.connection.client.transport_options
        removed = {key: options.pop(key) for key in OPTIONS_NOT_FOR_THE_ENGINE if key in options}
        try:
            return super()._engine_from_config()
        finally:
            options.update(removed)


class Transport(kombu_sqla.Transport):
    Channel = Channel


def split_url(broker_url: str) -> str | None:
    """The SQLAlchemy URL of a ``sqla+...`` broker URL (which this module's transport serves), else None."""
    if broker_url.startswith(URL_PREFIX):
        return broker_url[len(URL_PREFIX) :]
    return None
