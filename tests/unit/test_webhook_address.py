"""Webhook URLs that would reach our own network (SSRF) are refused; the send connects to the checked IP."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from dreamforge.error_codes import ErrorCode
from dreamforge.webhooks.address import (
    PinnedTarget,
    WebhookPolicy,
    WebhookRefused,
    check_webhook_url,
    forbidden_reason,
    pin_webhook_url,
)

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"
NAMES = {
    "hooks.example.com": [PUBLIC_V4, PUBLIC_V6],
    "rebind.example.com": ["127.0.0.1"],
    "mixed.example.com": [PUBLIC_V4, "10.1.2.3"],
}


def fake_resolver(host: str, port: int) -> list[str]:
    """Resolves only the names in NAMES, so no test touches the network."""
    try:
        return NAMES[host]
    except KeyError:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None


FAKE = WebhookPolicy(resolver=fake_resolver)
SYSTEM = WebhookPolicy()  # for `localhost` and numeric hosts only: /etc/hosts or no lookup at all


@pytest.mark.parametrize(
    ("url", "policy", "reason"),
    [
        ("https://127.0.0.1/", FAKE, "loopback address 127.0.0.1"),
        ("https://10.0.0.1/", FAKE, "private address 10.0.0.1"),
        ("https://169.254.169.254/latest/meta-data", FAKE, "cloud metadata address"),
        ("https://[fd00:ec2::254]/", FAKE, "cloud metadata address"),
        ("https://[::1]/", FAKE, "loopback address ::1"),
        ("https://[::ffff:127.0.0.1]/", FAKE, "ipv4-mapped loopback"),
        ("https://[::127.0.0.1]/", FAKE, "ipv4-compatible"),
        ("https://[2002:7f00:1::]/", FAKE, "6to4 loopback"),
        ("https://[64:ff9b::a00:1]/", FAKE, "nat64 private"),
        ("https://100.64.0.1/", FAKE, "cgnat"),
        ("https://224.0.0.1/", FAKE, "multicast"),
        ("https://localhost/", SYSTEM, "loopback"),
        ("https://rebind.example.com/", FAKE, "'rebind.example.com' resolves to loopback"),
        ("https://mixed.example.com/", FAKE, "private address 10.1.2.3"),
        ("https://2130706433/", FAKE, "loopback address 127.0.0.1"),
        ("https://0x7f.1/", FAKE, "loopback address 127.0.0.1"),
        ("https://127.1:8443/", FAKE, "loopback address 127.0.0.1"),
        ("ftp://example.com/", FAKE, "scheme 'ftp'"),
        ("http://example.com/", FAKE, "https only"),
        ("http://2130706433/", FAKE, "https only"),
        ("https://user:pw@example.com/", FAKE, "credentials"),
        ("https:///hook", FAKE, "no host"),
        ("https://example.com/" + "a" * 2048, FAKE, "longer than 2048"),
    ],
)
def test_refused(url: str, policy: WebhookPolicy, reason: str) -> None:
    with pytest.raises(WebhookRefused) as refused:
        check_webhook_url(url, policy)
    assert reason in refused.value.details["reason"].lower()
    # What check_webhook_url refuses, the send refuses too.
    with pytest.raises(WebhookRefused):
        pin_webhook_url(url, policy)


@pytest.mark.parametrize(
    ("url", "policy"),
    [
        (f"https://{PUBLIC_V4}/hook", FAKE),
        (f"https://[{PUBLIC_V6}]:8443/hook", FAKE),
        ("https://hooks.example.com/hook?token=x#frag", FAKE),
        ("http://127.0.0.1:8080/x", WebhookPolicy(frozenset({"127.0.0.1"}), fake_resolver)),
        ("http://[0:0::1]:8080/x", WebhookPolicy.from_setting(" [::1] ")),
        ("https://LocalHost/", WebhookPolicy.from_setting("example.org, Localhost ,")),
    ],
)
def test_allowed(url: str, policy: WebhookPolicy) -> None:
    check_webhook_url(url, policy)
    pin_webhook_url(url, policy)


def test_from_setting_normalises_entries() -> None:
    policy = WebhookPolicy.from_setting(" LocalHost , 0:0::1,, [::2], 127.0.0.1 ")
    assert policy.allow_hosts == {"localhost", "::1", "::2", "127.0.0.1"}


def test_an_unresolvable_name_passes_at_creation_but_not_at_send() -> None:
    url = "https://gone.example.com/hook"
    check_webhook_url(url, FAKE)
    with pytest.raises(WebhookRefused) as refused:
        pin_webhook_url(url, FAKE)
    assert refused.value.details["reason"] == "unresolvable"


def test_the_error_hides_credentials_and_query() -> None:
    with pytest.raises(WebhookRefused) as refused:
        check_webhook_url("https://user:secret@example.com/hook?token=abc", FAKE)
    error = refused.value
    assert (error.code, error.status) == (ErrorCode.webhook_refused, 422)
    assert error.details == {"field": "webhook", "reason": "credentials in the URL are not allowed"}
    assert "secret" not in error.message
    assert "abc" not in error.message
    assert "https://example.com/hook" in error.message


def test_pins_a_name_to_its_first_address() -> None:
    target = pin_webhook_url("https://Hooks.Example.com:8443/cb?id=1#frag", FAKE)
    assert target == PinnedTarget(
        url=f"https://{PUBLIC_V4}:8443/cb?id=1",
        host_header="hooks.example.com:8443",
        sni_hostname="hooks.example.com",
        address=PUBLIC_V4,
    )


def test_pins_an_ipv6_literal_in_brackets() -> None:
    target = pin_webhook_url(f"https://[{PUBLIC_V6}]/cb", FAKE)
    assert target == PinnedTarget(
        url=f"https://[{PUBLIC_V6}]/cb", host_header=f"[{PUBLIC_V6}]", sni_hostname=None, address=PUBLIC_V6
    )


def test_pinning_an_allowed_http_host_skips_the_address_checks() -> None:
    policy = dataclasses.replace(FAKE, allow_hosts=frozenset({"rebind.example.com"}))
    target = pin_webhook_url("http://rebind.example.com/x", policy)
    assert (target.url, target.host_header, target.sni_hostname) == (
        "http://127.0.0.1/x",
        "rebind.example.com",
        None,
    )


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        (PUBLIC_V4, None),
        (PUBLIC_V6, None),
        ("::ffff:93.184.215.14", None),  # mapped and NAT64 are judged by the embedded address
        ("64:ff9b::5db8:d70e", None),
        ("fe80::1%eth0", "link-local address fe80::1%eth0"),
        ("100.100.100.200", "cloud metadata address 100.100.100.200"),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "teredo loopback"),
    ],
)
def test_forbidden_reason(address: str, reason: str | None) -> None:
    found = forbidden_reason(address)
    if reason is None:
        assert found is None
    else:
        assert found is not None
        assert reason in found.lower()
