"""Results on an S3-compatible object store (``STORAGE_BACKEND=storages.backends.s3.S3Storage``), as the
README tells production to switch: a worker writes into the bucket, a web server that shares nothing else
with it serves the bytes, whole or as a ``Range``, each download one ranged ``GetObject`` read as it
arrives (``algorithms.storage.open_span``).

No object store runs on these machines, so the bucket is moto's S3 server: a real HTTP server on loopback
speaking the S3 API to botocore, the same client code that talks to AWS, MinIO or Ceph.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.core.files.base import ContentFile

from algorithms.storage import open_span
from tests.algorithms.helpers import submit, wait_final
from tests.conftest import PASSWORD, free_port, start_daphne, stop_daphne
from tests.queueing.conftest import ExtraWorker, make_queue

BUCKET = "conveyor-results"
QUEUE = "s3store"


class _Bucket:
    """moto's S3 server on a free loopback port, noting the ``Range`` of every object read it answers."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.reads: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        app = self.server._server.app  # type: ignore[union-attr]

        def noting(environ: dict[str, Any], start_response: Any) -> Any:
            if environ["REQUEST_METHOD"] == "GET" and environ["PATH_INFO"].startswith(f"/{BUCKET}/"):
                with self._lock:
                    self.reads.append((environ["PATH_INFO"], environ.get("HTTP_RANGE")))
            return app(environ, start_response)

        self.server._server.app = noting  # type: ignore[union-attr]
        self.options = {"bucket_name": BUCKET, "endpoint_url": self.endpoint, "access_key": "conveyor",
                        "secret_key": "conveyor-secret", "region_name": "us-east-1", "file_overwrite": False}
        self.client().create_bucket(Bucket=BUCKET)

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="conveyor",
                            aws_secret_access_key="conveyor-secret", region_name="us-east-1")

    def storage(self) -> Any:
        from storages.backends.s3 import S3Storage

        return S3Storage(**self.options)

    def env(self) -> dict[str, str]:
        return {"STORAGE_BACKEND": "storages.backends.s3.S3Storage", "STORAGE_OPTIONS": json.dumps(self.options)}

    def keys(self) -> list[str]:
        return [o["Key"] for o in self.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])]


@pytest.fixture(scope="module")
def bucket() -> Iterator[_Bucket]:
    store = _Bucket()
    yield store
    store.server.stop()


def test_a_span_of_an_object_is_one_ranged_read_and_a_missing_one_is_file_not_found(bucket):
    storage = bucket.storage()
    data = bytes(range(256)) * 8192  # 2 MiB
    name = storage.save("tasks/span/result-bin", ContentFile(data))
    bucket.reads.clear()

    with open_span(storage, name, 1000, 1_500_999) as fh:
        got = b"".join(iter(lambda: fh.read(65536), b""))

    assert got == data[1000:1_501_000]
    assert bucket.reads == [(f"/{BUCKET}/{name}", "bytes=1000-1500999")]  # not the whole object first
    with pytest.raises(FileNotFoundError):
        open_span(storage, "tasks/span/nothing-here", 0, 9)
    assert open_span(storage, name, 0, -1).read() == b""  # an empty file sends no request at all


def test_an_object_stored_gzipped_is_read_inflated_whole_and_ranged(bucket):
    """``gzip: true`` stores some types compressed (an SVG here): a ranged GET would be of the compressed
    bytes, so such an object is read as django-storages reads it, inflated."""
    from storages.backends.s3 import S3Storage

    storage = S3Storage(**bucket.options, gzip=True)
    data = b"<svg>" + b"<rect/>" * 20_000 + b"</svg>"
    name = storage.save("tasks/span/plot.svg", ContentFile(data))
    assert bucket.client().head_object(Bucket=BUCKET, Key=name)["ContentEncoding"] == "gzip"

    assert open_span(storage, name, 0, len(data) - 1).read() == data
    assert open_span(storage, name, 1000, 1999).read(1000) == data[1000:2000]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_worker_writes_results_into_the_bucket_and_a_web_server_sharing_only_it_serves_them(
        bucket, live_worker, alice, api):
    """The multi-host setup with S3: the worker and the web server are separate processes configured with
    the bucket; the result never touches PostgreSQL's storage tables or a disk they share."""
    from algorithms.models import StoredFile

    make_queue(QUEUE)
    env = {**live_worker.env, **bucket.env()}
    worker = ExtraWorker(env, QUEUE, 1, "s3")
    port = free_port()
    web = None
    try:
        worker.start()
        web = start_daphne(port, env, name="daphne-s3")
        client = api(alice)
        task = wait_final(client, submit(client, "demo.blob", {"size_mb": 2, "seed": 11}, queue=QUEUE)["id"])
        assert task["status"] == "SUCCEEDED", task["error"]
        keys = [k for k in bucket.keys() if k.startswith(f"tasks/{task['id']}/")]
        assert len(keys) == 1, bucket.keys()
        assert not StoredFile.objects.exists()  # nothing went to the database storage
        stored = bucket.client().get_object(Bucket=BUCKET, Key=keys[0])["Body"].read()

        base = f"http://127.0.0.1:{port}"
        token = httpx.post(f"{base}/api/v1/auth/token/", json={"username": "alice", "password": PASSWORD}).json()
        auth = {"Authorization": f"Bearer {token['access']}", "Accept-Encoding": "identity"}
        url = f"{base}/api/v1/tasks/{task['id']}/result/"
        bucket.reads.clear()
        whole = httpx.get(url, headers=auth, timeout=30)
        assert whole.status_code == 200, whole.text
        assert len(whole.content) == 2 * 1024 * 1024
        assert whole.content == stored
        assert whole.headers["ETag"] == f'"{hashlib.sha256(stored).hexdigest()}"'

        part = httpx.get(url, headers={**auth, "Range": "bytes=1048000-1048575"}, timeout=30)
        assert part.status_code == 206
        assert part.headers["Content-Range"] == f"bytes 1048000-1048575/{len(stored)}"
        assert part.content == stored[1048000:1048576]
        assert [r for _, r in bucket.reads] == [f"bytes=0-{len(stored) - 1}", "bytes=1048000-1048575"]

        cached = httpx.get(url, headers={**auth, "If-None-Match": whole.headers["ETag"]}, timeout=30)
        assert cached.status_code == 304
        assert len(bucket.reads) == 2  # answered from the row's checksum, the bucket not read
    finally:
        if web is not None:
            stop_daphne(web)
        worker.stop()
