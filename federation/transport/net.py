"""Connection policy for outbound federation: which addresses we may reach, how TLS is checked.

The address guard filters *resolved* addresses inside name resolution, so a hostname that
resolves to a private address (DNS rebinding included) is refused like an IP literal is.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IOpenSSLClientConnectionCreator,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
)
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer  # type: ignore[import-untyped]

from federation.discovery import is_ip_literal

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_TLS_CACHE_SIZE = 1024


# -- addresses ------------------------------------------------------------------------------------


def is_private_address(ip: IPAddress) -> bool:
    """Loopback, private, link-local, shared (CGNAT), reserved, documentation, unspecified
    or multicast: anything but a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return not ip.is_global or ip.is_multicast


@dataclass(frozen=True)
class AddressPolicy:
    """Which resolved addresses outbound requests may connect to.

    By default only public unicast addresses: a remote server name must not steer our
    requests to our own network (SSRF). ``allow_private`` lifts that (dev mode, tests);
    ``allowlist`` opens chosen networks, e.g. a closed deployment's LAN.
    """

    allow_private: bool = False
    allowlist: tuple[IPNetwork, ...] = ()
    # Refused even when public (operators' extra blocked ranges); the allowlist still wins.
    blocklist: tuple[IPNetwork, ...] = ()

    @classmethod
    def with_allowlist(
        cls, networks: Iterable[str], allow_private: bool = False, blocked: Iterable[str] = ()
    ) -> AddressPolicy:
        return cls(
            allow_private,
            tuple(ipaddress.ip_network(n, strict=False) for n in networks),
            tuple(ipaddress.ip_network(n, strict=False) for n in blocked),
        )

    def permits(self, host: str) -> bool:
        """Whether an IP address (string) may be connected to; hostnames are not judged here."""
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone index
        except ValueError:
            return True
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allowlist):
            return True
        if any(ip in net for net in self.blocklist):
            return False
        return self.allow_private or not is_private_address(ip)


@implementer(IHostnameResolver)
class GuardedHostnameResolver:
    """An IHostnameResolver that passes on only addresses the policy permits.

    If any address of a name is refused, all are: a name that mixes public and private
    addresses is treated as hostile (as Synapse does). ``blocked`` records what was refused,
    for error messages.
    """

    # Interface-typed values are Any: without the mypy-zope plugin mypy misreads them.
    def __init__(self, resolver: Any, policy: AddressPolicy):
        self._resolver = resolver
        self._policy = policy
        self.blocked: list[tuple[str, str]] = []  # (hostname, address)

    def resolveHostName(
        self,
        resolutionReceiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        found: list[IAddress] = []
        guard = self

        @implementer(IResolutionReceiver)
        class Filter:
            def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
                resolutionReceiver.resolutionBegan(resolutionInProgress)

            def addressResolved(self, address: IAddress) -> None:
                found.append(address)

            def resolutionComplete(self) -> None:
                refused = [
                    a.host
                    for a in found
                    if isinstance(a, IPv4Address | IPv6Address)
                    and not guard._policy.permits(a.host)
                ]
                if refused:
                    logger.warning("refusing %s: it resolves to %s", hostName, ", ".join(refused))
                    guard.blocked.extend((hostName, a) for a in refused)
                else:
                    for address in found:
                        resolutionReceiver.addressResolved(address)
                resolutionReceiver.resolutionComplete()

        result: Any = self._resolver.resolveHostName(
            Filter(), hostName, portNumber, addressTypes, transportSemantics
        )
        return result


@implementer(IReactorPluggableNameResolver)
class ReactorWithResolver:
    """The reactor, but with another name resolver (what HostnameEndpoint resolves with)."""

    def __init__(self, reactor: Any, resolver: Any):
        self._reactor = reactor
        self._resolver = resolver

    @property
    def nameResolver(self) -> Any:
        return self._resolver

    def installNameResolver(self, resolver: Any) -> Any:
        raise NotImplementedError("this view's resolver is fixed")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def guarded_reactor(reactor: Any, policy: AddressPolicy) -> tuple[Any, GuardedHostnameResolver]:
    """A reactor view whose name resolution applies ``policy``, and that resolver."""
    resolver = GuardedHostnameResolver(reactor.nameResolver, policy)
    return ReactorWithResolver(reactor, resolver), resolver


# -- TLS ----------------------------------------------------------------------------------------


@implementer(IOpenSSLClientConnectionCreator)
class _UncheckedTLS:
    """Client TLS without certificate checks (dev mode), still sending SNI."""

    def __init__(self, context: SSL.Context, server_name: str):
        self._context = context
        self._sni = None if is_ip_literal(server_name) else server_name.encode("ascii")

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        return connection


@implementer(IPolicyForHTTPS)
class TLSPolicy:
    """How we check the certificates of the servers we connect to.

    ``verify=True`` (the default) checks the chain against ``trust_root`` (the system CA
    store unless given) and the certificate against the expected name — the hostname, or
    for IP literals the address, in which case no SNI is sent (spec "TLS"). ``verify=False``
    accepts any certificate, for development with self-signed certificates.
    """

    def __init__(self, verify: bool = True, trust_root: Any = None):
        self.verify = verify
        self._trust_root = trust_root
        self._unchecked_context: SSL.Context | None = None
        self._creators: dict[str, Any] = {}  # IOpenSSLClientConnectionCreator

    def creator_for(self, server_name: str) -> Any:
        """The connection creator for a server expected to present ``server_name``."""
        creator = self._creators.get(server_name)
        if creator is not None:
            return creator
        if self.verify:
            # Cached: each creator holds an SSL context that loaded the trust store. No
            # trust root means the platform's (optionsForClientTLS's default).
            creator = ssl.optionsForClientTLS(server_name, trustRoot=self._trust_root)
        else:
            if self._unchecked_context is None:
                self._unchecked_context = ssl.CertificateOptions(verify=False).getContext()
            creator = _UncheckedTLS(self._unchecked_context, server_name)
        if len(self._creators) >= _TLS_CACHE_SIZE:
            self._creators.pop(next(iter(self._creators)))
        self._creators[server_name] = creator
        return creator

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return self.creator_for(hostname.decode("ascii"))
