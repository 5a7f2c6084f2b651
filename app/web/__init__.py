"""The web app for annotators: server-rendered pages (Jinja2), vendored static files, cookie sessions with CSRF.

Routes live in :mod:`app.web.pages` (HTML pages and their form posts) and :mod:`app.web.actions` (the JSON calls
the pages' scripts make); rules and queries stay in ``app/services``. Nothing is fetched from outside: scripts,
styles and the Swagger UI / ReDoc bundles are served from ``app/web/static`` (see ``static/vendor/README.md``)."""
