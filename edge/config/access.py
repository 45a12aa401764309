# -*- test-case-name: tests.unit.config.test_access, tests.e2e.test_access -*-
"""Who may come in: address rules, users files (basic auth) and token buckets.

Sans-IO: plain values in, plain values out, the time passed in by the
caller.  The HTTP policy (:mod:`edge.http.policy`) and the dispatcher
(:mod:`edge.app.dispatch`) ask these; neither has rules of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import os
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_TRACKED = 65536  # addresses a limiter remembers; the least recently seen goes first
VERIFY_CACHE = 1024  # (user, password) pairs whose verification is remembered


def client_address(ip: str) -> IPAddress | None:
    """The address a rule is matched on: no IPv6 scope, IPv4-mapped IPv6 as IPv4; None if not an address."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDR networks (or single addresses); ValueError naming the first that is neither."""
    networks = []
    for value in values:
        try:
            network = ipaddress.ip_network(value)
        except ValueError:
            try:
                loose = ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an address or CIDR network") from None
            raise ValueError(f"{value!r} has address bits set beyond its prefix (did you mean {loose}?)") from None
        if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 and \
                network.subnet_of(_MAPPED):  # ::ffff:10.0.0.0/104 is 10.0.0.0/8: addresses are matched as IPv4
            network = ipaddress.IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
        networks.append(network)
    return tuple(networks)


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def limit_key(ip: str) -> str:
    """What a rate or connection limit counts by: the IPv4 address, or the IPv6 /64 (one subscriber's
    usual share, as HAProxy's ``ipmask(32,64)`` and Traefik's ``ipv6Subnet`` count), so a client cannot
    step past a limit by rotating the addresses of its own prefix."""
    address = client_address(ip)
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address) if address is not None else ip


@dataclass(frozen=True)
class AddressRule:
    """``allow``/``deny`` lists: a denied address is refused; with an allow list, so is any address not on it."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny)

    def permits(self, ip: str) -> bool:
        address = client_address(ip)
        if address is None:  # not an IP (a UNIX socket, a PROXY header's UNKNOWN): only an open rule admits it
            return not self.allow
        if any(address in network for network in self.deny):
            return False
        return not self.allow or any(address in network for network in self.allow)


# -- rate limits --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """``count`` events per ``per`` seconds, with up to ``burst`` at once."""

    count: int
    per: float
    burst: int

    @property
    def interval(self) -> float:
        return self.per / self.count


class TokenBucket:
    """A token bucket: ``burst`` tokens, one more every ``rate.interval`` seconds."""

    __slots__ = ("rate", "tokens", "stamp")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.tokens = float(rate.burst)
        self.stamp = now

    def wait(self, now: float) -> float:
        """The seconds until a token is there (0.0: one is), spending nothing."""
        rate = self.rate
        tokens = min(float(rate.burst), self.tokens + max(0.0, now - self.stamp) / rate.interval)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) * rate.interval

    def take(self, now: float) -> float:
        """Spend a token: 0.0 if there was one, else the seconds until the next one (nothing spent)."""
        rate = self.rate
        if now > self.stamp:
            self.tokens = min(float(rate.burst), self.tokens + (now - self.stamp) / rate.interval)
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) * rate.interval


class Limiter:
    """A token bucket per key (a client address), at most ``max_keys`` of them (least recently used dropped).

    Dropping a bucket forgets a client's spending: it starts full again.  With more active addresses than
    ``max_keys`` a limit loosens, but memory stays bounded whatever a spray of addresses does.
    """

    def __init__(self, rate: Rate, max_keys: int = MAX_TRACKED) -> None:
        self.rate = rate
        self.max_keys = max_keys
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        """0.0 if ``key`` may go on now, else the seconds it should wait."""
        buckets = self.buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_keys:
                buckets.popitem(last=False)
            bucket = buckets[key] = TokenBucket(self.rate, now)
        else:
            buckets.move_to_end(key)
        return bucket.take(now)

    def wait(self, key: str, now: float) -> float:
        """The seconds ``key`` must wait before its next event (0.0: none), spending nothing."""
        bucket = self.buckets.get(key)
        return 0.0 if bucket is None else bucket.wait(now)


# -- users files (basic auth) ---------------------------------------------------------------------


class Gates:
    """The TCP gates of a config snapshot, by name: ``route:NAME`` (passthrough routes, and routes whose port
    80 is forwarded whole), ``ssh``, ``door:NAME``; each an address rule and a connection limiter."""

    __slots__ = ("gates",)

    def __init__(self, gates: dict[str, tuple[AddressRule, Limiter | None]]) -> None:
        self.gates = gates

    def refused(self, gate: str, client: str, now: float) -> str | None:
        """Why a connection from ``client`` may not pass ``gate`` (``address not allowed``, ``too many
        connections``); None if it may (a pass is counted)."""
        rule, limiter = self.gates.get(gate, (None, None))
        if rule and not rule.permits(client):
            return "address not allowed"
        if limiter is not None and limiter.take(limit_key(client), now) > 0:
            return "too many connections"
        return None


class UsersFileError(ValueError):
    """A users file line edge cannot use; the message names the line."""


_SHA512_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SHA512_ORDER = ((0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
                 (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
                 (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41))


def sha512_crypt(password: bytes, setting: str) -> str:
    """SHA-512 crypt (``$6$[rounds=N$]salt$...``, Ulrich Drepper's specification), as glibc's crypt(3) and
    ``openssl passwd -6`` write it.  Here because Python's crypt module is gone from 3.13 on."""
    parts = setting.split("$")
    if len(parts) < 3 or parts[1] != "6":
        raise ValueError("not a SHA-512 crypt setting")
    rounds, custom = 5000, False
    salt_part = parts[2]
    if salt_part.startswith("rounds="):
        rounds = max(1000, min(999_999_999, int(salt_part[7:])))
        custom = True
        salt_part = parts[3] if len(parts) > 3 else ""
    salt = salt_part[:16].encode("ascii")
    p, s = password, salt
    b = hashlib.sha512(p + s + p).digest()
    a = hashlib.sha512(p + s)
    length = len(p)
    while length > 64:
        a.update(b)
        length -= 64
    a.update(b[:length])
    length = len(p)
    while length:
        a.update(b if length & 1 else p)
        length >>= 1
    a_digest = a.digest()
    dp = hashlib.sha512(p * len(p)).digest()
    p_bytes = (dp * (len(p) // 64 + 1))[: len(p)]
    ds = hashlib.sha512(s * (16 + a_digest[0])).digest()
    s_bytes = (ds * (len(s) // 64 + 1))[: len(s)]
    c = a_digest
    for i in range(rounds):
        h = hashlib.sha512(p_bytes if i & 1 else c)
        if i % 3:
            h.update(s_bytes)
        if i % 7:
            h.update(p_bytes)
        h.update(c if i & 1 else p_bytes)
        c = h.digest()
    out = []
    for x, y, z in _SHA512_ORDER:
        value = (c[x] << 16) | (c[y] << 8) | c[z]
        for _ in range(4):
            out.append(_SHA512_ALPHABET[value & 63])
            value >>= 6
    value = c[63]
    for _ in range(2):
        out.append(_SHA512_ALPHABET[value & 63])
        value >>= 6
    prefix = f"$6$rounds={rounds}$" if custom else "$6$"
    return prefix + salt.decode("ascii") + "$" + "".join(out)


def _check_sha512(stored: str, password: bytes) -> bool:
    return hmac.compare_digest(sha512_crypt(password, stored).encode("ascii"), stored.encode("ascii"))


def _check_bcrypt(stored: str, password: bytes) -> bool:
    import bcrypt  # imported when a users file needs it: edge without basic auth does not

    if len(password) > 72:  # bcrypt reads 72 bytes; bcrypt>=5 refuses longer ones instead of cutting
        password = password[:72]
    try:
        return bcrypt.checkpw(password, stored.encode("ascii"))
    except ValueError:
        return False


def _check_argon2(stored: str, password: bytes) -> bool:
    from argon2 import PasswordHasher
    from argon2.exceptions import Argon2Error, InvalidHashError

    try:
        return PasswordHasher().verify(stored, password)
    except (Argon2Error, InvalidHashError):
        return False


def hash_checker(stored: str) -> Callable[[str, bytes], bool] | None:
    """The function that checks a password against ``stored``, by its prefix; None if not a known kind."""
    if stored.startswith(("$2y$", "$2b$", "$2a$")) and len(stored) == 60:
        return _check_bcrypt
    if stored.startswith(("$argon2id$", "$argon2i$", "$argon2d$")):
        return _check_argon2
    if stored.startswith("$6$"):
        return _check_sha512
    return None


MAX_PASSWORD = 1024  # bytes: longer is refused before any hashing (SHA-512 crypt's cost grows with the length)
_SHA512_LINE = re.compile(r"\$6\$(?:rounds=\d{1,9}\$)?[^$:]{0,16}\$[./0-9A-Za-z]{86}")


def parse_users(text: str) -> dict[str, str]:
    """A users file (``name:hash`` lines, as ``htpasswd -B`` writes them) as {name: hash}.

    bcrypt (``$2y$``), argon2 (``$argon2id$``) and SHA-512 crypt (``$6$``) hashes are accepted; anything
    else (MD5 ``$apr1$``, SHA-1 ``{SHA}``, plain text) is refused with its line number, as is a name twice.
    Blank lines and ``#`` comments are skipped.
    """
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, stored = line.partition(":")
        if not sep or not name or not stored:
            raise UsersFileError(f"line {number}: not \"name:hash\"")
        if stored.startswith("$6$") and not _SHA512_LINE.fullmatch(stored):
            raise UsersFileError(f"line {number} ({name}): a malformed SHA-512 crypt ($6$) hash")
        if hash_checker(stored) is None:
            raise UsersFileError(f"line {number} ({name}): not a bcrypt ($2y$), argon2 or SHA-512 crypt ($6$) hash "
                                 "(write it with htpasswd -B)")
        if name in users:
            raise UsersFileError(f"line {number}: {name!r} is there twice")
        users[name] = stored
    if not users:
        raise UsersFileError("no users in it")
    return users


class Users:
    """The users of a ``basic_auth`` file and a bounded cache of verified passwords.

    bcrypt and argon2 are slow on purpose (tens of milliseconds): a browser sends the same credentials with
    every request, so a success is remembered under a digest keyed by a random secret of this process: no
    password is kept.  Wrong passwords have their own smaller cache, so a flood of them cannot push the
    right ones out.  An unknown user is checked against the file's most expensive hash, so it costs what
    a known one does (no timing tell); a password over ``MAX_PASSWORD`` bytes is refused unhashed.
    """

    def __init__(self, users: dict[str, str], cache_size: int = VERIFY_CACHE) -> None:
        self.users = users
        self.cache_size = cache_size
        self.cache: OrderedDict[bytes, bool] = OrderedDict()  # successes
        self.failed: OrderedDict[bytes, bool] = OrderedDict()
        self._key = os.urandom(32)
        self._dummy = max(users.values(), key=_cost)

    def verify(self, user: str, password: bytes) -> bool:
        """Whether ``password`` is ``user``'s (hashing here if it is not remembered)."""
        known = self.known(user, password)
        if known is not None:
            return known
        result = self.compute(user, password)
        self.remember(user, password, result)
        return result

    def _digest(self, user: str, password: bytes) -> bytes:
        return hmac.new(self._key, user.encode("utf-8", "surrogateescape") + b"\0" + password, "sha256").digest()

    def known(self, user: str, password: bytes) -> bool | None:
        """The remembered answer (a password over ``MAX_PASSWORD`` bytes is a no), or None: it must be hashed."""
        if len(password) > MAX_PASSWORD:
            return False
        digest = self._digest(user, password)
        if digest in self.cache:
            self.cache.move_to_end(digest)
            return True
        if digest in self.failed:
            return False
        return None

    def compute(self, user: str, password: bytes) -> bool:
        """The slow part, touching no shared state (so a worker thread may run it)."""
        stored = self.users.get(user)
        if stored is None:
            dummy = hash_checker(self._dummy)
            if dummy is not None:  # always, for users that parse_users read
                dummy(self._dummy, password)  # the same work; the answer is no
            return False
        checker = hash_checker(stored)
        return checker is not None and checker(stored, password)

    def remember(self, user: str, password: bytes, result: bool) -> None:
        digest = self._digest(user, password)
        cache = self.cache if result else self.failed
        cache[digest] = result
        if len(cache) > (self.cache_size if result else self.cache_size // 4):
            cache.popitem(last=False)


def _cost(stored: str) -> float:
    """How expensive checking ``stored`` is, roughly (to pick the dummy an unknown user is checked against)."""
    if stored.startswith("$2"):
        return 2.0 ** int(stored[4:6]) / 10.0  # bcrypt: 2^cost rounds
    if stored.startswith("$6$"):
        rounds = re.match(r"\$6\$rounds=(\d+)\$", stored)
        return (int(rounds.group(1)) if rounds else 5000) / 1000.0
    return 500.0  # argon2: tens of milliseconds at its defaults
