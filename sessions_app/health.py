"""``GET /health``: 200 when the database answers, else a 503 problem."""

from flask import Blueprint

from . import db
from .operations import describe
from .schemas import health_schema

bp = Blueprint("health", __name__)


@bp.get("/health")
@describe(
    "Check the service and its database",
    "200 when the database answers, else a 503 problem.",
    response=health_schema,
    errors=(503,),
    tag="service",
)
def health():
    db.ping()
    return {"status": "ok"}
