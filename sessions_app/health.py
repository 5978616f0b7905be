"""``GET /health``: 200 when the database answers, else a 503 problem."""

from flask import Blueprint

from . import db

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    db.ping()
    return {"status": "ok"}
