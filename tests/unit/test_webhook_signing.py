"""What a receiver relies on: signatures its `standardwebhooks` library accepts, stable ids and secrets,
and which answers get another attempt."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from dreamforge.webhooks.sender import MAX_RETRY_AFTER_SECONDS, SendResult, retry_after_seconds
from dreamforge.webhooks.signing import key_secret, service_secret, signed_headers, valid_secret, webhook_id


def test_a_signed_body_verifies_with_the_standard_library_and_a_changed_one_does_not() -> None:
    secret = service_secret(b"signing-key")
    body = b'{"event":"completed","id":"x"}'
    headers = signed_headers(secret, webhook_id(uuid.uuid4()), body, datetime.now(UTC))
    assert Webhook(secret).verify(body, headers) == {"event": "completed", "id": "x"}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"completed", b"canceled"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(key_secret(b"signing-key", uuid.uuid4())).verify(body, headers)


def test_secrets_are_stable_per_key_distinct_across_keys_and_overridable() -> None:
    key = uuid.uuid4()
    assert key_secret(b"k", key) == key_secret(b"k", key) != key_secret(b"k", uuid.uuid4())
    assert key_secret(b"k", key) != key_secret(b"other", key)
    assert valid_secret(key_secret(b"k", key)) and valid_secret(service_secret(b"k"))
    assert service_secret(b"k", "whsec_configured") == "whsec_configured"
    assert not valid_secret("whsec_short") and not valid_secret("not-a-secret")


def test_the_webhook_id_is_the_same_for_every_attempt_of_a_delivery() -> None:
    delivery = uuid.uuid4()
    assert webhook_id(delivery) == webhook_id(delivery) == f"msg_{delivery.hex}"


@pytest.mark.parametrize(
    ("result", "retry"),
    [
        (SendResult(status_code=503), True),
        (SendResult(status_code=500), True),
        (SendResult(status_code=429), True),
        (SendResult(status_code=408), True),
        (SendResult(error="timed out (ReadTimeout)"), True),
        (SendResult(status_code=400), False),
        (SendResult(status_code=404), False),
        (SendResult(status_code=410), False),
        (SendResult(status_code=301), False),
        (SendResult(error="refused: loopback", refused=True), False),
    ],
)
def test_network_errors_408_429_and_5xx_are_retried_other_answers_are_final(
    result: SendResult, retry: bool
) -> None:
    assert result.retryable is retry
    assert not result.delivered


def test_retry_after_is_read_as_seconds_or_a_date_and_capped() -> None:
    now = datetime.now(UTC)
    assert retry_after_seconds("30") == 30.0
    when = retry_after_seconds(format_datetime(now + timedelta(seconds=120), usegmt=True), now.timestamp())
    assert when is not None and 119 <= when <= 121
    assert retry_after_seconds("999999999") == MAX_RETRY_AFTER_SECONDS
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
