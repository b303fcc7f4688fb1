"""The real URLconf plus ``/bench/insert/``: the floor an endpoint in the same server can reach."""
from __future__ import annotations

import json

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from config.urls import urlpatterns as conveyor_urlpatterns

TABLE_SQL = ("CREATE TABLE IF NOT EXISTS bench_insert "
             "(id bigserial PRIMARY KEY, body jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())")


@csrf_exempt
def insert(request: HttpRequest) -> JsonResponse:
    """One INSERT of the request body, committed (autocommit); no auth, no validation."""
    body = json.loads(request.body or b"{}")
    with connection.cursor() as cur:
        cur.execute("INSERT INTO bench_insert (body) VALUES (%s) RETURNING id", [json.dumps(body)])
        (row_id,) = cur.fetchone()
    return JsonResponse({"id": row_id}, status=201)


urlpatterns = [*conveyor_urlpatterns, path("bench/insert/", insert)]
