"""The HTTP ingress: the Flask app factory, the publish endpoint, routes, auth and the gunicorn worker."""
