"""Private, loopback, link-local (cloud metadata) and other non-public addresses are refused, at creation
and again at every delivery (the resolved address, at connect time), unless WEBHOOK_ALLOWED_NETWORKS
lists them. Redirects are never followed."""
from __future__ import annotations

import pytest

from webhooks import transport

pytestmark = pytest.mark.django_db


@pytest.fixture
def no_allowed_networks(settings):
    settings.WEBHOOKS = {**settings.WEBHOOKS, "ALLOWED_NETWORKS": []}


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.5.5.5", "::1", "10.0.0.1", "172.16.3.4", "192.168.1.1", "169.254.169.254", "fe80::1",
    "100.64.0.1", "0.0.0.0", "224.0.0.1", "240.0.0.1", "fc00::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1",
    "2002:7f00:1::", "2002:a9fe:a9fe::", "2002:c0a8:101::", "fec0::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2",
])
def test_non_public_addresses_are_refused(no_allowed_networks, address):
    assert transport.refusal(address) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "2002:5db8:d822::"])
def test_public_addresses_pass(no_allowed_networks, address):
    assert transport.refusal(address) is None


def test_allowed_networks_open_only_what_they_list(settings):
    settings.WEBHOOKS = {**settings.WEBHOOKS, "ALLOWED_NETWORKS": ["127.0.0.0/8"]}
    assert transport.refusal("127.0.0.1") is None
    assert transport.refusal("169.254.169.254") is not None
    assert transport.refusal("10.0.0.1") is not None


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:8000/hook", "http://localhost/hook",
    "http://10.1.2.3/hook", "http://[::1]/hook", "http://0x7f000001/hook",
])
def test_creating_a_webhook_to_a_private_url_is_400(no_allowed_networks, alice, api, url):
    response = api(alice).post("/api/v1/webhooks/", {"url": url, "events": ["task.*"]}, format="json")
    assert response.status_code == 400, response.content
    reason = response.json()["error"]["fields"]["url"][0]
    assert "WEBHOOK_ALLOWED_NETWORKS" in reason  # what a developer with a local receiver has to set


@pytest.mark.parametrize(("url", "carried"), [
    ("http://[2002:7f00:1::]/", "127.0.0.1"),  # 6to4 around loopback
    ("http://[2002:a9fe:a9fe::]/latest/meta-data/", "169.254.169.254"),  # around the cloud metadata address
    ("http://[2002:c0a8:101::]/hook", "192.168.1.1"),  # around a private address
    ("http://[fec0::1]/hook", "fec0::1 is a site-local address"),
])
def test_a_webhook_to_an_ipv6_address_carrying_a_private_one_is_400_naming_url(no_allowed_networks, alice, api,
                                                                               url, carried):
    response = api(alice).post("/api/v1/webhooks/", {"url": url, "events": ["task.*"]}, format="json")
    assert response.status_code == 400, response.content
    reason = response.json()["error"]["fields"]["url"][0]
    assert carried in reason and "WEBHOOK_ALLOWED_NETWORKS" in reason
    assert api(alice).get("/api/v1/webhooks/").json()["results"] == []  # nothing was created


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "http://user:pw@example.com/"])
def test_only_plain_http_and_https_urls(alice, api, url):
    response = api(alice).post("/api/v1/webhooks/", {"url": url, "events": ["task.*"]}, format="json")
    assert response.status_code == 400, response.content


def test_delivery_to_a_refused_address_is_not_sent_and_not_retried(no_allowed_networks, receiver):
    # The URL was fine when created; at delivery the guard checks the resolved address again.
    result = transport.send(receiver.url, b"{}", {})
    assert result.status_code is None
    assert result.error.startswith("refused: ") and not result.transient
    assert receiver.requests == []


def test_redirects_are_not_followed(receiver):
    from tests.webhooks.conftest import Reply

    receiver.respond = [Reply(302, {"location": "http://169.254.169.254/latest/"})]
    result = transport.send(receiver.url, b"{}", {})
    assert result.status_code == 302
    assert len(receiver.requests) == 1


def test_response_body_is_read_only_up_to_the_cap(settings, receiver):
    from tests.webhooks.conftest import Reply

    settings.WEBHOOKS = {**settings.WEBHOOKS, "RESPONSE_MAX_BYTES": 100}
    receiver.respond = [Reply(200, body=b"x" * 1_000_000)]
    result = transport.send(receiver.url, b"{}", {})
    assert result.status_code == 200
    assert len(result.body) == 100
