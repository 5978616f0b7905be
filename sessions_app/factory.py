"""The Flask app, built by named steps (``sessions_app.create_app`` calls this)."""

import orjson
from flask import Flask
from flask.json.provider import JSONProvider

from . import (
    auth,
    config,
    db,
    errors,
    feed,
    health,
    logs,
    metrics,
    migrations,
    openapi,
    proxy,
    requestid,
    requestlog,
    retention,
    views,
)


class OrjsonProvider(JSONProvider):
    """Flask's JSON provider backed by orjson."""

    mimetype = "application/json"

    def dumps(self, obj, **kwargs):
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()

    def loads(self, s, **kwargs):
        return orjson.loads(s)

    def response(self, *args, **kwargs):
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(
            orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS), mimetype=self.mimetype
        )


class SessionsFlask(Flask):
    json_provider_class = OrjsonProvider

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sync = {}  # view or hook -> what ensure_sync made of it

    def ensure_sync(self, func):
        # Flask asks, for the view and each hook of every request, whether it
        # is an ``async def`` (an inspection costing microseconds each time);
        # the answer for one of the app's functions never changes.
        sync = self._sync.get(func)
        if sync is None:
            sync = self._sync[func] = super().ensure_sync(func)
        return sync


def create_app(mapping=None):
    """Build the app: defaults, then the environment, then ``mapping``."""
    app = SessionsFlask("sessions_app")
    app.config.from_mapping(config.load(mapping))
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_BODY_BYTES"]
    # First, so every request has an id, a log line, a count and a token
    # check, whatever answers it.
    requestid.init_app(app)
    logs.init_app(app)
    requestlog.init_app(app)
    metrics.init_app(app)
    auth.init_app(app)
    proxy.init_app(app)
    db.init_app(app)
    feed.init_app(app)  # after db: its settings go with the database bound
    migrations.init_app(app)
    errors.init_app(app)
    app.register_blueprint(views.bp)
    app.register_blueprint(health.bp)
    retention.init_app(app)
    openapi.init_app(app)  # last: it describes the routes registered above
    return app
