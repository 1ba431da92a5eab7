"""WSGI entry point for gunicorn (``wsgi_app = "app.wsgi:app"``)."""

from app import create_app

app = create_app()
