"""Webhook secrets and signatures, per the Standard Webhooks spec (the `standardwebhooks` package).

Secrets are `whsec_` + base64 of 32 bytes. A job made with an API key is signed with that key's secret,
one made without (DF_AUTH=off) with the service's: `DF_WEBHOOK_SECRET`, or one derived from the signing
secret. Derived secrets are HMACs of the signing secret, so nothing secret is stored for them and every
process of the service computes the same ones; rotating `DF_SIGNING_SECRET` rotates them too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from datetime import datetime

from standardwebhooks.webhooks import Webhook

SECRET_PREFIX = "whsec_"
_LABEL = b"dreamforge webhook secret v1:"


def _derived(signing_key: bytes, label: bytes) -> str:
    digest = hmac.new(signing_key, _LABEL + label, hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(digest).decode()


def key_secret(signing_key: bytes, key_id: uuid.UUID) -> str:
    """The webhook secret of an API key (shown once, when the key is created)."""
    return _derived(signing_key, key_id.bytes)


def service_secret(signing_key: bytes, configured: str | None = None) -> str:
    """The secret of jobs made without an API key: `DF_WEBHOOK_SECRET` when set, else derived."""
    return configured or _derived(signing_key, b"service")


def webhook_id(delivery_id: uuid.UUID) -> str:
    """The `webhook-id` of a delivery: the same on every attempt, so receivers can de-duplicate."""
    return f"msg_{delivery_id.hex}"


def signed_headers(secret: str, message_id: str, body: bytes, at: datetime) -> dict[str, str]:
    """The three Standard Webhooks headers for `body` sent at `at` (an aware UTC datetime)."""
    signature = Webhook(secret).sign(message_id, at, body.decode())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


def valid_secret(secret: str) -> bool:
    """True for a `whsec_` secret the signer accepts (base64 of at least 24 bytes)."""
    if not secret.startswith(SECRET_PREFIX):
        return False
    try:
        return len(base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)) >= 24
    except ValueError:
        return False
