"""Results of any size: inline JSON up to RESULT_INLINE_MAX, a streamed file beyond, artifacts, Range,
zstd, retention (410). Real worker, REST in and out."""
from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import httpx
import numpy as np
import pytest
import zstandard
from django.utils import timezone

from algorithms import results
from tests.algorithms.helpers import body, run

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MIB = 1024 * 1024


def expected_blob(size_mb: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    total, out = int(size_mb * MIB), []
    while total > 0:
        out.append(rng.bytes(min(MIB, total)))
        total -= len(out[-1])
    return b"".join(out)


def test_blob_result_is_stored_as_a_file_and_downloads_whole_in_ranges_and_zstd(live_worker, alice, api):
    client = api(alice)
    expected = expected_blob(2.5, 7)

    task = run(client, "demo.blob", {"size_mb": 2.5, "seed": 7})

    meta = task["result_meta"]
    assert meta["storage"] == "file"
    assert meta["size"] == len(expected) == int(2.5 * MIB)
    assert meta["sha256"] == hashlib.sha256(expected).hexdigest()
    assert meta["content_type"] == "application/octet-stream"
    assert meta["summary"] == {"size_mb": 2.5, "seed": 7}
    assert meta["expired"] is False

    url = f"/api/v1/tasks/{task['id']}/result/"
    whole = client.get(url, HTTP_ACCEPT="application/octet-stream")
    assert whole.status_code == 200
    assert whole["Content-Length"] == str(len(expected))
    assert whole["ETag"] == f'"{meta["sha256"]}"'
    assert body(whole) == expected

    part = client.get(url, HTTP_RANGE="bytes=1000000-1000999")
    assert part.status_code == 206
    assert part["Content-Range"] == f"bytes 1000000-1000999/{len(expected)}"
    assert body(part) == expected[1000000:1001000]

    tail = client.get(url, HTTP_RANGE="bytes=-10")
    assert tail.status_code == 206 and body(tail) == expected[-10:]

    assert client.get(url, HTTP_RANGE=f"bytes={len(expected)}-").status_code == 416

    packed = client.get(url, HTTP_ACCEPT_ENCODING="gzip, zstd")
    assert packed.status_code == 200 and packed["Content-Encoding"] == "zstd"
    assert zstandard.ZstdDecompressor().decompressobj().decompress(body(packed)) == expected


def test_a_zstd_download_has_a_validator_of_its_own_so_a_resume_never_splices_plain_bytes_into_it(
        live_worker, alice, api):
    # A download manager resuming with the tag and a Range got 206 of *plain* bytes to append to the
    # compressed ones it had (the same strong ETag and Accept-Ranges on both): a corrupt file.
    client = api(alice)
    expected = expected_blob(1.5, 9)
    task = run(client, "demo.blob", {"size_mb": 1.5, "seed": 9})
    url, plain_tag = f"/api/v1/tasks/{task['id']}/result/", f'"{task["result_meta"]["sha256"]}"'

    packed = client.get(url, HTTP_ACCEPT_ENCODING="zstd")
    packed_tag = packed["ETag"]
    assert packed["Content-Encoding"] == "zstd" and packed["Accept-Ranges"] == "none"
    assert packed_tag.startswith("W/") and packed_tag != plain_tag
    head = body(packed)[:100_000]

    resumed = client.get(url, HTTP_ACCEPT_ENCODING="zstd", HTTP_RANGE="bytes=100000-", HTTP_IF_RANGE=packed_tag)
    assert resumed.status_code == 200 and resumed["Content-Encoding"] == "zstd"  # the whole, not a splice
    again = body(resumed)
    assert again[:100_000] == head
    assert zstandard.ZstdDecompressor().decompressobj().decompress(again) == expected

    cached = client.get(url, HTTP_ACCEPT_ENCODING="zstd", HTTP_IF_NONE_MATCH=packed_tag)
    assert cached.status_code == 304 and "Accept-Encoding" in cached["Vary"]  # a shared cache keeps both apart
    assert client.get(url, HTTP_ACCEPT_ENCODING="zstd", HTTP_IF_NONE_MATCH=plain_tag).status_code == 200
    plain = client.get(url, HTTP_IF_NONE_MATCH=plain_tag)
    assert plain.status_code == 304 and plain["ETag"] == plain_tag
    ranged = client.get(url, HTTP_ACCEPT_ENCODING="zstd", HTTP_RANGE="bytes=10-19", HTTP_IF_RANGE=plain_tag)
    assert ranged.status_code == 206 and "Content-Encoding" not in ranged and body(ranged) == expected[10:20]


def test_a_stored_result_the_client_has_already_is_a_304_without_its_bytes(live_worker, alice, api):
    # A client that keeps downloads (a notebook re-run, a sync script) asks with the ETag it has.
    client = api(alice)
    task = run(client, "demo.blob", {"size_mb": 0.5, "seed": 5})
    url, etag = f"/api/v1/tasks/{task['id']}/result/", f'"{task["result_meta"]["sha256"]}"'

    same = client.get(url, HTTP_IF_NONE_MATCH=etag)
    listed = client.get(url, HTTP_IF_NONE_MATCH=f'"other", W/{etag}')
    other = client.get(url, HTTP_IF_NONE_MATCH='"not-this-one"')

    assert same.status_code == 304 and same["ETag"] == etag and body(same) == b""
    assert listed.status_code == 304
    assert other.status_code == 200 and len(body(other)) == int(0.5 * MIB)


def test_json_result_over_the_inline_limit_goes_to_storage_and_small_one_stays_inline(live_worker, alice, api):
    client = api(alice)

    big = run(client, "demo.blob", {"size_mb": 0.5, "seed": 3, "format": "json"})
    small = run(client, "demo.blob", {"size_mb": 0.01, "seed": 3, "format": "json"})

    assert big["result_meta"]["storage"] == "file"
    assert big["result_meta"]["content_type"] == "application/json"
    assert big["result_meta"]["size"] > 256 * 1024
    assert big["result_meta"]["summary"] == {"type": "object", "keys": ["seed", "values"], "length": 2}
    downloaded = json.loads(body(client.get(f"/api/v1/tasks/{big['id']}/result/")))
    expected = np.random.default_rng(3).integers(1_000_000, 9_999_999, int(0.5 * MIB) // 8).tolist()
    assert downloaded == {"seed": 3, "values": expected}

    assert small["result_meta"]["storage"] == "inline"
    inline = client.get(f"/api/v1/tasks/{small['id']}/result/").json()
    assert inline["result"]["seed"] == 3 and len(inline["result"]["values"]) == int(0.01 * MIB) // 8


def test_artifacts_are_listed_and_downloadable_and_private(live_worker, alice, bob, api):
    client = api(alice)
    task = run(client, "demo.files", {"count": 3})

    listed = client.get(f"/api/v1/tasks/{task['id']}/artifacts/").json()

    assert [a["name"] for a in listed] == ["file-0.txt", "file-1.txt", "file-2.txt"]
    content = f"artifact 1 of task {task['id']}\n".encode()
    assert listed[1]["size"] == len(content) and listed[1]["sha256"] == hashlib.sha256(content).hexdigest()
    assert listed[1]["content_type"] == "text/plain"
    download = client.get(listed[1]["url"])
    assert download.status_code == 200 and body(download) == content
    assert client.get(f"/api/v1/tasks/{task['id']}/artifacts/nope.txt/").status_code == 404
    assert api(bob).get(listed[1]["url"]).status_code == 404
    assert api(bob).get(f"/api/v1/tasks/{task['id']}/artifacts/").status_code == 404


def test_retention_deletes_files_and_inline_results_but_keeps_the_summary_and_answers_410(live_worker, alice, api):
    client = api(alice)
    blob = run(client, "demo.blob", {"size_mb": 0.3, "seed": 1})
    files = run(client, "demo.files", {"count": 1})
    inline = run(client, "demo.hello", {"seconds": 0, "steps": 1})

    counts = results.expire(now=timezone.now() + timedelta(days=31))

    assert counts["files"] >= 2 and counts["inline_results"] >= 2
    meta = client.get(f"/api/v1/tasks/{blob['id']}/").json()["result_meta"]
    assert meta["expired"] is True and meta["summary"] == {"size_mb": 0.3, "seed": 1}
    assert meta["sha256"] == blob["result_meta"]["sha256"]
    gone = client.get(f"/api/v1/tasks/{blob['id']}/result/")
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "result_expired"
    artifact = client.get(f"/api/v1/tasks/{files['id']}/artifacts/").json()[0]
    assert artifact["expired"] is True
    assert client.get(artifact["url"]).status_code == 410
    inline_meta = client.get(f"/api/v1/tasks/{inline['id']}/").json()["result_meta"]
    assert inline_meta["expired"] is True and inline_meta["summary"]["keys"] == ["greeting", "completed_steps"]
    assert client.get(f"/api/v1/tasks/{inline['id']}/result/").status_code == 410


def test_stored_result_streams_through_a_real_asgi_server_whole_ranged_and_zstd(live_worker, live_web, alice, api):
    from tests.conftest import PASSWORD

    client = api(alice)
    expected = expected_blob(3, 11)
    task = run(client, "demo.blob", {"size_mb": 3, "seed": 11})
    token = httpx.post(f"{live_web}/api/v1/auth/token/", json={"username": "alice", "password": PASSWORD}).json()
    auth = {"Authorization": f"Bearer {token['access']}"}
    url = f"{live_web}/api/v1/tasks/{task['id']}/result/"

    whole = httpx.get(url, headers={**auth, "Accept-Encoding": "identity"}, timeout=60)
    part = httpx.get(url, headers={**auth, "Range": "bytes=2000000-2000099"}, timeout=60)
    packed = httpx.get(url, headers={**auth, "Accept-Encoding": "zstd"}, timeout=60)  # httpx decodes zstd

    assert whole.status_code == 200 and whole.content == expected
    assert whole.headers["content-length"] == str(len(expected))
    assert part.status_code == 206 and part.content == expected[2000000:2000100]
    assert packed.headers["content-encoding"] == "zstd" and packed.content == expected


def test_a_retry_starts_clean_without_the_failed_attempts_artifacts(live_worker, alice, api):
    client = api(alice)

    task = run(client, "demo.files", {"count": 1, "fail_on_attempts": 1})

    assert task["attempts"] == 2
    assert [a["name"] for a in client.get(f"/api/v1/tasks/{task['id']}/artifacts/").json()] == ["file-0.txt"]
