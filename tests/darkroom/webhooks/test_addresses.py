"""The address policy: public addresses pass, every kind of internal one is refused unless
the allow-list names it."""

from __future__ import annotations

import ipaddress

import pytest

from darkroom.webhooks.addresses import AddressPolicy, AddressRefused

REFUSED = [
    "127.0.0.1",  # loopback
    "::1",
    "10.1.2.3",  # private
    "172.16.0.9",
    "192.168.1.1",
    "169.254.169.254",  # link-local: the cloud metadata service
    "fe80::1",
    "fd00:ec2::254",  # unique local: AWS's IPv6 metadata service
    "100.64.0.1",  # shared address space (carrier NAT)
    "0.0.0.0",  # noqa: S104 - an address to refuse, not one we bind
    "::ffff:127.0.0.1",  # IPv4 loopback written as IPv6
    "::ffff:10.0.0.1",
    "224.0.0.1",  # multicast
    "240.0.0.1",  # reserved
]


@pytest.mark.parametrize("address", REFUSED)
def test_internal_addresses_are_refused(address: str) -> None:
    assert not AddressPolicy().permits(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "2001:4860:4860::8888", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert AddressPolicy().permits(ipaddress.ip_address(address))


def test_the_allow_list_lets_its_networks_in_and_no_others() -> None:
    policy = AddressPolicy.of(["127.0.0.0/8", "10.0.0.0/24"])
    assert policy.permits(ipaddress.ip_address("127.0.0.1"))
    assert policy.permits(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert policy.permits(ipaddress.ip_address("10.0.0.200"))
    assert not policy.permits(ipaddress.ip_address("10.0.1.1"))
    assert not policy.permits(ipaddress.ip_address("169.254.169.254"))


def test_a_host_with_one_internal_address_among_public_ones_is_refused() -> None:
    addresses = [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.1")]
    with pytest.raises(AddressRefused, match=r"hooks\.example resolves to 10\.0\.0\.1"):
        AddressPolicy().check("hooks.example", addresses)
    with pytest.raises(AddressRefused, match="no address"):
        AddressPolicy().check("hooks.example", [])
