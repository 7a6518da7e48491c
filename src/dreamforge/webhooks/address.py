"""Which webhook URLs we may POST to, and to which address exactly.

A job's `webhook` is a URL chosen by the user and called by our servers, so without checks it is a
server-side request forgery (SSRF) hole: `https://169.254.169.254/...` reads cloud credentials,
`https://127.0.0.1:6379/` talks to the broker, and a name the user controls can resolve to either.
So only `https` is allowed, and every address a host resolves to must be a public unicast address,
judged on what the resolver returned (so `http://2130706433/` or `0x7f.1` fool nothing) and, for
IPv6 forms that carry an IPv4 address (mapped, 6to4, Teredo, NAT64), on the embedded address too.

A name checked once and looked up again at connect time can answer differently the second time
(DNS rebinding), so the send uses `pin_webhook_url`: it resolves once, checks, and returns the
address to connect to, with the Host header and TLS server name the original URL implies.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from dreamforge.error_codes import ErrorCode
from dreamforge.errors import DreamForgeError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

MAX_URL_LENGTH: Final = 2048
_DEFAULT_PORTS: Final = {"https": 443, "http": 80}

_METADATA: Final = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_SHARED: Final = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, RFC 6598
_PRIVATE: Final = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
# Not globally reachable per the IANA registries, but newer than what Python 3.11's `is_global` knows.
_NOT_GLOBAL: Final = tuple(ipaddress.ip_network(n) for n in ("192.0.0.0/24", "64:ff9b:1::/48", "3fff::/20"))
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE: Final = ipaddress.ip_network("::/96")

_HOSTNAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
# A last label that is a number makes the host an IPv4 address (WHATWG URL), never a DNS name.
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")


class WebhookRefused(DreamForgeError):
    """The webhook URL may not be called (SSRF protection); `details.reason` says why."""

    code = ErrorCode.webhook_refused
    status = 422

    def __init__(self, url: str, reason: str) -> None:
        shown = _shown(url)
        super().__init__(
            f"webhook URL {shown!r} refused: {reason}", details={"field": "webhook", "reason": reason}
        )
        self.reason = reason


def _shown(url: str) -> str:
    """The URL fit for messages and logs: no credentials, query string or fragment (they carry tokens)."""
    try:
        parts = urlsplit(url)
        shown = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
    except ValueError:
        shown = re.split(r"[?#]", url, maxsplit=1)[0]
    return shown if len(shown) <= 200 else shown[:200] + "…"


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to for a TCP connection, in the resolver's order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _normalise_allowed(entry: str) -> str:
    entry = entry.strip().lower().removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_address(entry))
    except ValueError:
        return entry.rstrip(".")


@dataclass(frozen=True)
class WebhookPolicy:
    """Hosts that may be called over plain `http` and skip the address checks, and how names resolve."""

    allow_hosts: frozenset[str] = frozenset()
    resolver: Resolver = system_resolver

    def __post_init__(self) -> None:
        allowed = frozenset(_normalise_allowed(h) for h in self.allow_hosts if h.strip())
        object.__setattr__(self, "allow_hosts", allowed)

    @classmethod
    def from_setting(cls, value: str) -> WebhookPolicy:
        """The policy for a comma-separated allow-list setting such as `"localhost, 127.0.0.1"`."""
        return cls(allow_hosts=frozenset(p.strip().lower() for p in value.split(",") if p.strip()))


@dataclass(frozen=True)
class PinnedTarget:
    """Where a webhook POST goes: `url` names the checked address, the rest keeps the original name."""

    url: str
    host_header: str
    sni_hostname: str | None
    address: str


def _kind(ip: IPAddress) -> str | None:
    """What makes `ip` forbidden ("loopback", "private", ...), or None for a public unicast address."""
    bare = ipaddress.IPv6Address(int(ip)) if isinstance(ip, ipaddress.IPv6Address) else ip
    if bare in _METADATA:
        return "cloud metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip in _SHARED:
        return "shared (cgnat)"
    if any(ip in net for net in _PRIVATE):
        return "private"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global or any(ip in net for net in _NOT_GLOBAL):
        return "non-public"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, list[ipaddress.IPv4Address]] | None:
    """The form and the IPv4 addresses an IPv6 address carries, if it is one of those forms."""
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", [ip.ipv4_mapped]
    if ip in _NAT64:
        return "NAT64", [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour is not None:
        return "6to4", [ip.sixtofour]
    if ip.teredo is not None:
        server, client = ip.teredo
        return "Teredo", [client, server]
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # `::` and `::1` are themselves, not IPv4
        return "IPv4-compatible", [ipaddress.IPv4Address(int(ip))]
    return None


def forbidden_reason(address: str) -> str | None:
    """Why we may not connect to `address` (an IP literal), or None for a public unicast address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"invalid address {address!r}"
    if isinstance(ip, ipaddress.IPv6Address) and (embedded := _embedded_ipv4(ip)) is not None:
        form, inner = embedded
        for v4 in inner:
            if (kind := _kind(v4)) is not None:
                return f"{form} {kind} address {address} (embeds {v4})"
        if form == "IPv4-compatible":
            return f"deprecated IPv4-compatible address {address}"
        if form in ("IPv4-mapped", "NAT64"):
            # The packets go to the embedded address, which is public; Python calls the prefix reserved.
            return None
    kind = _kind(ip)
    return None if kind is None else f"{kind} address {address}"


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # lowercase ASCII, IPv6 without brackets
    literal: IPAddress | None
    port: int
    explicit_port: bool
    path: str
    query: str
    allowed: bool


def _literal(host: str) -> IPAddress | None:
    """The IP address `host` spells, also in the legacy IPv4 forms (`2130706433`, `0x7f.1`, `127.1`)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    bare = host.removesuffix(".")
    if not _NUMERIC_LABEL.fullmatch(bare.rpartition(".")[2]):
        return None
    try:
        # inet_aton parses exactly the forms getaddrinfo accepts, so we judge what would be dialled.
        return ipaddress.IPv4Address(socket.inet_aton(bare))
    except OSError:
        return None


def _parse(url: str, policy: WebhookPolicy) -> _Target:
    """The URL's parts, refusing what is wrong whatever the host resolves to."""
    if len(url) > MAX_URL_LENGTH:
        raise WebhookRefused(url, f"URL longer than {MAX_URL_LENGTH} characters")
    # urlsplit silently drops some of these, so the URL we check would not be the one the user sent.
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise WebhookRefused(url, "URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefused(url, f"malformed URL ({exc})") from None
    scheme = parts.scheme
    if scheme not in _DEFAULT_PORTS:
        raise WebhookRefused(url, f"scheme {scheme!r} not allowed (https only)")
    if "@" in parts.netloc:
        raise WebhookRefused(url, "credentials in the URL are not allowed")
    if not parts.hostname:
        raise WebhookRefused(url, "URL has no host")
    if port == 0:
        raise WebhookRefused(url, "port 0 is not allowed")
    try:
        host = parts.hostname.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise WebhookRefused(url, f"invalid host name {parts.hostname!r}") from None
    literal = _literal(host)
    if literal is None:
        if _NUMERIC_LABEL.fullmatch(host.removesuffix(".").rpartition(".")[2]):
            raise WebhookRefused(url, f"malformed IPv4 address {host!r}")
        if not _HOSTNAME.fullmatch(host):
            raise WebhookRefused(url, f"invalid host name {host!r}")
    key = str(literal) if literal is not None else host.removesuffix(".")
    allowed = key in policy.allow_hosts
    if scheme == "http" and not allowed:
        raise WebhookRefused(url, f"plain http not allowed for host {host!r} (https only)")
    return _Target(
        scheme=scheme,
        host=host,
        literal=literal,
        port=port if port is not None else _DEFAULT_PORTS[scheme],
        explicit_port=port is not None,
        path=parts.path,
        query=parts.query,
        allowed=allowed,
    )


def _refuse_forbidden(url: str, target: _Target, addresses: list[str]) -> None:
    for address in addresses:
        if (reason := forbidden_reason(address)) is not None:
            shown = reason if target.literal is not None else f"host {target.host!r} resolves to {reason}"
            raise WebhookRefused(url, shown)


def check_webhook_url(url: str, policy: WebhookPolicy) -> None:
    """At job creation: raise WebhookRefused if the URL can be judged bad now.

    A name that does not resolve passes (DNS may be briefly down); `pin_webhook_url` judges it again.
    """
    target = _parse(url, policy)
    if target.allowed:
        return
    if target.literal is not None:
        _refuse_forbidden(url, target, [str(target.literal)])
        return
    try:
        addresses = policy.resolver(target.host, target.port)
    except OSError:
        return
    _refuse_forbidden(url, target, addresses)


def pin_webhook_url(url: str, policy: WebhookPolicy) -> PinnedTarget:
    """At send time: resolve once, refuse forbidden addresses and pin the first, so no DNS rebinding.

    Raises WebhookRefused, with reason "unresolvable" when the name does not resolve.
    """
    target = _parse(url, policy)
    if target.literal is not None:
        addresses = [str(target.literal)]
    else:
        try:
            addresses = policy.resolver(target.host, target.port)
        except OSError:
            addresses = []
        if not addresses:
            raise WebhookRefused(url, "unresolvable")
    if not target.allowed:
        _refuse_forbidden(url, target, addresses)
    address = addresses[0]
    suffix = f":{target.port}" if target.explicit_port else ""
    ip_host = f"[{address.replace('%', '%25')}]" if ":" in address else address
    name_host = f"[{target.host}]" if ":" in target.host else target.host
    return PinnedTarget(
        url=urlunsplit((target.scheme, ip_host + suffix, target.path, target.query, "")),
        host_header=name_host + suffix,
        sni_hostname=(
            target.host.removesuffix(".") if target.scheme == "https" and target.literal is None else None
        ),
        address=address,
    )
