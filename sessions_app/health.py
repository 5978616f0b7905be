"""``GET /health``: 200 when the database answers, else a 503 problem."""

from flask import Blueprint

from .db import database

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    database.execute_sql("SELECT 1")
    return {"status": "ok"}
