"""The WSGI entry point for Gunicorn: ``gunicorn wsgi:app``."""

from sessions_app import create_app

app = create_app()
