"""Signatures verify with the reference Standard Webhooks library (an independent implementation)."""
from __future__ import annotations

import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from webhooks import signing


def test_new_secret_is_whsec_base64_of_32_bytes():
    import base64

    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert signing.new_secret() != secret


def test_headers_verify_with_standardwebhooks():
    secret = signing.new_secret()
    body = b'{"event":"task.succeeded","task_id":"t1","seq":5}'
    headers = signing.headers([secret], "msg_abc", int(time.time()), body)

    assert Webhook(secret).verify(body, headers) == {"event": "task.succeeded", "task_id": "t1", "seq": 5}
    assert headers["webhook-signature"].startswith("v1,")


def test_wrong_secret_or_changed_body_fails_verification():
    secret = signing.new_secret()
    body = b'{"event":"task.created"}'
    headers = signing.headers([secret], "msg_abc", int(time.time()), body)

    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"event":"task.failed"}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-id": "msg_other"})


def test_during_rotation_both_old_and_new_secret_verify():
    new, old = signing.new_secret(), signing.new_secret()
    body = b"{}"
    headers = signing.headers([new, old], "msg_1", int(time.time()), body)

    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(body, headers)
    Webhook(old).verify(body, headers)
