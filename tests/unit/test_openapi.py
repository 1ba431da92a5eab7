"""The OpenAPI document describes exactly the routes the app serves."""

from app.config import settings_from_text
from app.http.factory import create_app
from app.http.openapi import document


def _served() -> set[tuple[str, str]]:
    app = create_app(settings_from_text("RMQ_CONN_STR,a,h:1/", "t", {}))
    served = {(rule.rule, method.lower()) for rule in app.url_map.iter_rules()
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    # POST /publish, the exchange form and the management API's publish are answered in front of Flask
    # (app/http/publish_endpoint.py).
    return served | {("/publish", "post"), ("/publish/{connection_id}/{exchange}/{routing_key}", "post"),
                     ("/api/exchanges/{vhost}/{exchange}/publish", "post")}


def test_document_and_routes_agree():
    documented = {(path, method) for path, ops in document()["paths"].items() for method in ops}
    assert documented == _served()


def test_document_is_valid_openapi_3_1():
    from jsonschema import Draft202012Validator

    doc = document()
    assert doc["openapi"].startswith("3.1.")
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (path, method)
            for answer in op["responses"].values():
                for media in answer.get("content", {}).values():
                    # Every schema is a valid JSON Schema 2020-12 (what OpenAPI 3.1 uses), refs resolved.
                    Draft202012Validator.check_schema(media["schema"])
