"""WSGI entry point for gunicorn (``wsgi_app = "app.http.wsgi:app"``)."""

from app.http.factory import create_app

app = create_app()
