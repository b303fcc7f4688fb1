"""The OpenAPI schema is complete and valid: every API endpoint is in it, with its request body, its
responses, the error shape, auth schemes and examples; the docs UIs work without internet."""
from __future__ import annotations

import io
import json
import re

import pytest
import yaml
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.generators import EndpointEnumerator
from openapi_spec_validator import validate

from tests.edge.conftest import operations

pytestmark = pytest.mark.django_db

NOT_IN_SCHEMA = {"/api/schema/", "/api/docs/", "/api/redoc/"}  # the schema and its viewers


def _walk(patterns, prefix=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern.callback


def test_schema_is_a_valid_openapi_3_document(client):
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    document = json.loads(response.content)
    validate(document)  # raises on any violation of the OpenAPI 3 specification
    assert document["openapi"].startswith("3.")


def test_schema_is_served_as_yaml_too(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi")
    assert response.status_code == 200
    assert yaml.safe_load(response.content)["info"]["title"] == "Conveyor API"
    assert client.get("/api/schema/?format=yaml").status_code == 200


def test_generator_needs_no_guessing():
    """Any warning (a view without a serializer, an untyped path parameter, a name collision) fails."""
    out = io.StringIO()
    call_command("spectacular", "--fail-on-warn", "--validate", stdout=out, stderr=io.StringIO())
    assert "openapi:" in out.getvalue()


def test_every_api_endpoint_is_documented(schema):
    # Plain Django views under /api/ cannot be described: every API route must be a DRF view.
    for route, callback in _walk(get_resolver().url_patterns):
        if route.lstrip("^").startswith("api/"):
            assert hasattr(callback, "cls"), f"{route} is not a DRF view, so it cannot be in the schema"
    documented = {(path, method) for path, method, _ in operations(schema)}
    missing = [
        f"{method} {path}" for path, _regex, method, _cb in EndpointEnumerator().get_api_endpoints()
        if path not in NOT_IN_SCHEMA and (path.replace("{pk}", "{id}"), method.lower()) not in documented
    ]
    assert not missing, f"undocumented endpoints: {missing}"


def test_every_operation_documents_success_errors_and_auth(schema):
    for path, method, op in operations(schema):
        where = f"{method.upper()} {path}"
        responses = op["responses"]
        ok = [code for code in responses if code.startswith("2")]
        assert ok, f"{where}: no success response"
        assert op.get("operationId") and op.get("tags"), where
        errors = [code for code in responses if code[0] in "45"]
        assert errors, f"{where}: no error responses"
        for code in errors:
            body = responses[code].get("content", {}).get("application/json", {})
            if code != "503" and code != "410":
                assert body.get("schema", {}).get("$ref") == "#/components/schemas/Error", f"{where} {code}"
                assert body.get("examples"), f"{where} {code}: no example"
        security = op.get("security", [])
        if security and {} not in security:
            assert "401" in responses and "403" in responses, where
        if path != "/api/v1/system/health/":
            assert "Retry-After" in responses["429"]["headers"], where
        if "{" in path:
            assert "404" in responses, where
        if "requestBody" in op:
            assert "400" in responses, where


def test_auth_schemes_are_declared(schema):
    schemes = schema["components"]["securitySchemes"]
    assert schemes["jwtAuth"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert schemes["apiKeyAuth"]["type"] == "apiKey" and schemes["apiKeyAuth"]["in"] == "header"


def test_error_shape_is_one_component(schema):
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    detail = schema["components"]["schemas"]["ErrorDetail"]
    assert set(detail["properties"]) == {"code", "message", "fields"}


@pytest.mark.parametrize("url", ["/api/docs/", "/api/redoc/"])
def test_docs_ui_loads_only_local_assets(client, url):
    response = client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    external = re.findall(r'(?:src|href)="(https?://[^"]+)"', html)
    assert not external, f"{url} loads from the internet: {external}"
    assets = re.findall(r'(?:src|href)="/static/([^"?]+)', html)
    assert assets, html[:500]
    for asset in assets:
        assert finders.find(asset), f"{asset} is not a local static file"


def test_unknown_api_url_answers_in_the_error_shape(client):
    response = client.get("/api/v1/tasks/0.5/")
    assert response.status_code == 404 and response["Content-Type"] == "application/json"
    assert response.json() == {"error": {"code": "not_found", "message": "no such endpoint: /api/v1/tasks/0.5/"}}
