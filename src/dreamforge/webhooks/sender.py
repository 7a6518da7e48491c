"""One HTTP attempt at a webhook: pinned to the checked address, bounded in time and size, no redirects.

httpx does the HTTP; what it cannot do by itself is connect to an address we chose while speaking TLS
to the URL's name, which its `sni_hostname` extension and a `Host` header give us: the name is
resolved and checked once (`address.pin_webhook_url`), and the connection goes to that very address,
so a DNS answer that changes between the check and the connect (rebinding) cannot redirect it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

from dreamforge.webhooks.address import WebhookPolicy, WebhookRefused, pin_webhook_url

# Enough of an answer to log its start; the rest is never read.
MAX_RESPONSE_BYTES = 64 * 1024
# Retry-After beyond this is taken as this: a receiver cannot park a delivery for longer than a day.
MAX_RETRY_AFTER_SECONDS = 86_400.0
# Statuses worth another attempt besides 5xx: the receiver timed out or asked us to slow down.
RETRYABLE_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class SendResult:
    """What one attempt got: a status code, or an error before any answer."""

    status_code: int | None = None
    error: str | None = None
    # Seconds the receiver asked us to wait (`Retry-After` on 429/503).
    retry_after: float | None = None
    # True when the URL may not be called at all (a forbidden address): no retry helps.
    refused: bool = False

    @property
    def delivered(self) -> bool:
        """A 2xx answer."""
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def retryable(self) -> bool:
        """Network errors, timeouts, 408, 429 and 5xx are retried; other answers and refusals are final."""
        if self.refused:
            return False
        if self.status_code is None:
            return True
        return self.status_code in RETRYABLE_STATUSES or self.status_code >= 500


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now (delta-seconds or an HTTP date), capped; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


class WebhookSender:
    """Sends signed bodies to webhook URLs under the service's address policy; thread-safe."""

    def __init__(self, policy: WebhookPolicy, *, connect_timeout: float, read_timeout: float) -> None:
        self.policy = policy
        self.read_timeout = read_timeout
        timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=5.0)
        # No redirects: a 3xx could point the delivery anywhere, past the address checks.
        self._client = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)

    def close(self) -> None:
        """Close pooled connections."""
        self._client.close()

    def send(self, url: str, headers: dict[str, str], body: bytes) -> SendResult:
        """POST `body` to `url` once; never raises for what the receiver or the network does."""
        try:
            target = pin_webhook_url(url, self.policy)
        except WebhookRefused as exc:
            # An unresolvable name may resolve later; a forbidden address will not become allowed.
            reason = str(exc.details.get("reason", exc.message))
            return SendResult(error=exc.message, refused=not reason.startswith("unresolvable"))
        request_headers = {**headers, "Host": target.host_header}
        extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
        deadline = time.monotonic() + self.read_timeout
        try:
            with self._client.stream(
                "POST", target.url, content=body, headers=request_headers, extensions=extensions
            ) as response:
                read = 0
                # The body is drained only up to a cap and only while time is left, then dropped.
                for chunk in response.iter_raw():
                    read += len(chunk)
                    if read >= MAX_RESPONSE_BYTES or time.monotonic() > deadline:
                        break
                return SendResult(
                    status_code=response.status_code,
                    retry_after=retry_after_seconds(response.headers.get("retry-after")),
                )
        except httpx.TimeoutException as exc:
            return SendResult(error=f"timed out ({type(exc).__name__})")
        except httpx.HTTPError as exc:
            return SendResult(error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
