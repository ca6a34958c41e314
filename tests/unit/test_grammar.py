"""wgmesh.grammar: whole-string, ASCII-only checks of every value that can reach a rendered
file or a command line (tests/unit/test_hostile_inputs.py drives them through the loaders)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgmesh import grammar

# What trips a pattern written with ^...$, \d or str.isdigit: a trailing newline, other
# scripts' digits, a NUL, a line or paragraph separator.
SUFFIXES = ["\n", "\r", "\x00", "\u2028", " ", "\t"]
NON_ASCII_DIGITS = ["\u0661", "\uff11", "\u09e7"]  # Arabic-Indic, fullwidth, Bengali one


@pytest.mark.parametrize(("pattern", "good"), [
    (grammar.NODE_NAME, "web-1"), (grammar.USER, "alice@example.com"),
    (grammar.USER, "alice@"), (grammar.TAG, "tag:prod-db"), (grammar.GROUP, "group:eng"),
    (grammar.HOST_ALIAS, "corp.lan"), (grammar.DOMAIN, "corp.example"),
    (grammar.DNS_NAME, "VPN.example.com"), (grammar.IFNAME, "wg0"),
    (grammar.LOGIN, "deploy"), (grammar.DATE, "2026-12-07"), (grammar.DIGITS, "51820"),
    (grammar.SSH_LOCALPART, "localpart:*@example.com"),
])
def test_a_good_value_passes_and_nothing_can_be_appended_to_it(pattern, good):
    assert grammar.matches(pattern, good)
    for suffix in SUFFIXES:
        assert not grammar.matches(pattern, good + suffix), repr(good + suffix)
        assert not grammar.matches(pattern, suffix + good), repr(suffix + good)
    assert not grammar.matches(pattern, good.encode())  # text only
    assert not grammar.matches(pattern, None)


def test_names_keep_to_their_lengths_and_shapes():
    assert grammar.matches(grammar.NODE_NAME, "a" * 63)
    assert not grammar.matches(grammar.NODE_NAME, "a" * 64)
    assert not grammar.matches(grammar.NODE_NAME, "-web")
    assert not grammar.matches(grammar.NODE_NAME, "Web")
    # Room for "-hop" within Linux's 15 characters.
    assert grammar.matches(grammar.IFNAME, "a" * 11)
    assert not grammar.matches(grammar.IFNAME, "a" * 12)
    assert not grammar.matches(grammar.TAG, "tag:1x")
    assert not grammar.matches(grammar.LOGIN, "1root")


@pytest.mark.parametrize("digit", NON_ASCII_DIGITS)
def test_digits_are_ascii_digits(digit):
    assert not grammar.matches(grammar.DIGITS, digit)
    assert grammar.port(f"5182{digit}") is None
    assert grammar.ip_address(f"10.0.0.{digit}") is None
    assert grammar.endpoint(f"192.0.2.1:5182{digit}") is None


def test_ports():
    assert grammar.port(1) == 1 and grammar.port("65535") == 65535
    for bad in (0, 65536, -1, True, "0x50", " 80", "80 ", "", 80.0, None):
        assert grammar.port(bad) is None, repr(bad)


def test_addresses_and_networks_are_written_plainly():
    assert str(grammar.ip_address("fd7a:115c:a1e0::1")) == "fd7a:115c:a1e0::1"
    assert grammar.ip_address("192.0.2.1", 6) is None
    for bad in ("fe80::1%eth0", "[::1]", " 192.0.2.1", "192.0.2.1\n", "192.0.2.256", 3232235777):
        assert grammar.ip_address(bad) is None, repr(bad)
    assert str(grammar.ip_network("10.0.0.0/8")) == "10.0.0.0/8"
    assert grammar.ip_network("10.0.0.1/8") is None  # host bits set
    assert str(grammar.ip_network("10.0.0.1/8", strict=False)) == "10.0.0.0/8"
    assert grammar.ip_network("10.0.0.0/8/8") is None
    assert "host bits set" in grammar.network_error("10.0.0.1/8")
    assert "only digits" in grammar.network_error("10.0.0.0 /8")


def test_endpoints():
    assert grammar.endpoint("192.0.2.1:51820") == ("192.0.2.1", 51820)
    assert grammar.endpoint("[2001:db8::1]:51820") == ("2001:db8::1", 51820)
    assert grammar.endpoint("vpn.example.com:443") == ("vpn.example.com", 443)
    for bad in ("2001:db8::1:51820", "[192.0.2.1]:51820", "host:0", "host:65536",
                "-host:80", "host", "host:80\n", "[2001:db8::1]:80 ", "a b:80"):
        assert grammar.endpoint(bad) is None, repr(bad)
    assert grammar.host_address("192.0.2.1") and grammar.host_address("h.example")
    assert not grammar.host_address("h_1.example")


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_every_32_byte_key_in_base64_is_a_public_key_and_nothing_else_is(raw):
    text = base64.b64encode(raw).decode()
    assert grammar.public_key(text)
    assert not grammar.public_key(text + "\n")
    assert not grammar.public_key(text[:-2] + "==")
    assert not grammar.public_key(base64.b64encode(raw + b"\0").decode())


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_printable_is_printable_ascii_and_nothing_else(text):
    assert grammar.printable(text) == all(0x20 <= ord(c) <= 0x7e for c in text)
