"""Making API keys and the keyed hash the registry stores in their place.

A key is `df_live_` followed by 43 URL-safe characters (256 random bits); the prefix lets secret
scanners recognise a leaked key. Only an HMAC-SHA256 of the key is stored, keyed by a pepper derived
from the service's signing secret (`DF_SIGNING_SECRET`, or the generated key in `DF_DATA_DIR`), so a
copy of the database alone cannot be used to check guesses. Rotating that secret revokes every key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "df_live_"
# Characters of a key shown in listings and logs: the prefix and the first few random ones.
SHOWN_CHARS = len(KEY_PREFIX) + 6
_PEPPER_LABEL = b"dreamforge api key v1"


def new_key() -> str:
    """A fresh API key, shown to its owner once."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def looks_like_key(text: str) -> bool:
    """True when `text` has the shape of one of our keys (cheap check before any hashing)."""
    return text.startswith(KEY_PREFIX) and 20 <= len(text) <= 200


def key_digest(signing_secret: bytes, key: str) -> str:
    """The keyed hash stored for `key` (hex)."""
    pepper = hmac.new(signing_secret, _PEPPER_LABEL, hashlib.sha256).digest()
    return hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()


def shown_part(key: str) -> str:
    """What listings show of a key: enough to tell keys apart, nothing to use."""
    return key[:SHOWN_CHARS]
