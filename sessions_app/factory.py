"""The Flask app, built by named steps (``sessions_app.create_app`` calls this)."""

from flask import Flask

from . import (
    auth,
    config,
    db,
    errors,
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
from .jsonio import OrjsonProvider


class SessionsFlask(Flask):
    json_provider_class = OrjsonProvider


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
    migrations.init_app(app)
    errors.init_app(app)
    app.register_blueprint(views.bp)
    app.register_blueprint(health.bp)
    retention.init_app(app)
    openapi.init_app(app)  # last: it describes the routes registered above
    return app
