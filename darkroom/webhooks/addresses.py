"""Which addresses a webhook may reach: public ones, and those an allow-list names.

Loopback, private, link-local (the cloud metadata service, 169.254.169.254, among them),
shared, multicast and reserved addresses are refused unless DARKROOM_WEBHOOK_ALLOW_NETWORKS
lists a network holding them. An IPv4 address written as IPv6 (`::ffff:10.0.0.1`) is
judged as the IPv4 address it is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressRefused(Exception):
    """A webhook's host is, or resolves to, an address it may not reach."""


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses, plus the `allowed` networks."""

    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, networks: Iterable[str]) -> AddressPolicy:
        """The policy of DARKROOM_WEBHOOK_ALLOW_NETWORKS (already checked by the settings)."""
        return cls(tuple(ipaddress.ip_network(network, strict=False) for network in networks))

    def permits(self, address: IPAddress) -> bool:
        """Whether a webhook may connect to `address`."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.allowed):
            return True
        return address.is_global and not address.is_multicast

    def check(self, host: str, addresses: Iterable[IPAddress]) -> list[IPAddress]:
        """`addresses` (what `host` resolved to), when every one is permitted; otherwise
        AddressRefused naming the first that is not (a host that resolves to one public
        and one private address is refused: the connection could go to either)."""
        checked = list(addresses)
        if not checked:
            raise AddressRefused(f"{host} resolved to no address")
        for address in checked:
            if not self.permits(address):
                raise AddressRefused(
                    f"{host} resolves to {address}, a loopback, private, link-local or "
                    "reserved address (DARKROOM_WEBHOOK_ALLOW_NETWORKS does not list it)"
                )
        return checked


def literal(host: str) -> IPAddress | None:
    """`host` as an IP address, if it is one (`[::1]` too)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
