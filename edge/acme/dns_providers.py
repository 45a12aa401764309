# -*- test-case-name: tests.e2e.test_dns01 -*-
"""The three DNS-01 providers, and the blocking DNS questions the solver asks.

* ``rfc2136``: a dynamic update (RFC 2136) signed with TSIG (RFC 8945), sent
  with dnspython to ``server``; the zone comes from the config or from the
  SOA that server reports.
* ``acme-dns``: joohoi/acme-dns's ``POST /update`` with ``X-Api-User`` /
  ``X-Api-Key``; acme-dns keeps the two newest values of a subdomain and has
  no removal, so cleanup does nothing.
* ``exec``: ``program present|cleanup FQDN VALUE`` (lego's ``exec`` convention,
  FQDN with its trailing dot); its exit status and stderr explain a failure.

Everything here blocks and runs in the ACME worker thread.
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.tsig
import dns.tsigkeyring
import dns.update

from edge.acme.dns01 import DnsProblem, Record
from edge.config import AcmeDnsConfig

TTL = 60
QUERY_TIMEOUT = 5.0
HOOK_TIMEOUT = 120.0
PEER_ERRORS = {dns.tsig.PeerBadSignature: "BADSIG", dns.tsig.PeerBadKey: "BADKEY", dns.tsig.PeerBadTime: "BADTIME",
               dns.tsig.PeerBadTruncation: "BADTRUNC"}


def _address(host: str) -> str:
    """An IP address for ``host`` (dnspython sends to addresses only)."""
    try:
        return str(socket.getaddrinfo(host, 53, type=socket.SOCK_DGRAM)[0][4][0])  # an IP (v4 or v6) sockaddr
    except OSError as e:
        raise DnsProblem(f"cannot resolve DNS server {host}: {e.strerror or e}") from None


def ask(server: tuple[str, int], name: str, rdtype: str) -> dns.message.Message:
    """One non-recursive question to ``server`` (UDP, TCP when truncated)."""
    query = dns.message.make_query(name, rdtype)
    query.flags &= ~dns.flags.RD  # an authoritative answer, not a cache's
    response, _ = dns.query.udp_with_fallback(query, _address(server[0]), port=server[1], timeout=QUERY_TIMEOUT)
    return response


def txt_values(server: tuple[str, int], name: str) -> tuple[set[str] | None, str]:
    """The TXT values ``server`` has at ``name`` (after in-zone CNAMEs), or None and what it said instead."""
    try:
        response = ask(server, name, "TXT")
    except dns.exception.Timeout:
        return None, f"no answer in {QUERY_TIMEOUT:g}s"
    except (OSError, dns.exception.DNSException) as e:
        return None, str(e) or type(e).__name__
    if response.rcode() != dns.rcode.NOERROR:
        return None, dns.rcode.to_text(response.rcode())
    values = {b"".join(rdata.strings).decode("ascii", "replace")
              for rrset in response.answer if rrset.rdtype == dns.rdatatype.TXT for rdata in rrset}
    return values, ""


def cname_of(server: tuple[str, int] | None, name: str) -> str | None:
    """The target of ``name``'s CNAME, asking ``server`` (the system resolver when None); None if there is none."""
    try:
        if server is None:
            answer = dns.resolver.resolve(name, "CNAME", raise_on_no_answer=False)
            rrset = answer.rrset
        else:
            response = ask(server, name, "CNAME")
            rrset = next((r for r in response.answer if r.rdtype == dns.rdatatype.CNAME
                          and r.name == dns.name.from_text(name)), None)
    except (dns.exception.DNSException, OSError, DnsProblem):
        return None  # no CNAME to follow: the record is written at the name itself
    return str(rrset[0].target).rstrip(".") if rrset else None


def authoritative_servers(name: str) -> tuple[tuple[str, int], ...]:
    """The addresses of the name servers of the zone holding ``name``, found through the system resolver."""
    try:
        zone = dns.resolver.zone_for_name(name)
        servers = []
        for ns in dns.resolver.resolve(zone, "NS"):
            for rdtype in ("A", "AAAA"):
                try:
                    servers += [(str(a), 53) for a in dns.resolver.resolve(ns.target, rdtype)]
                except dns.exception.DNSException:
                    pass
    except dns.exception.DNSException as e:
        raise DnsProblem(f"cannot find the authoritative servers of {name}: {e}") from None
    if not servers:
        raise DnsProblem(f"cannot find the authoritative servers of {name}: no addresses for its NS records")
    return tuple(servers)


class Rfc2136:
    """Dynamic updates signed with TSIG, sent to one primary server."""

    name = "rfc2136"

    def __init__(self, config: AcmeDnsConfig) -> None:
        assert config.server is not None and config.tsig_key_name
        self.server = config.server
        self.zone = config.zone
        self.key_name = config.tsig_key_name
        self.algorithm = config.tsig_algorithm
        self.keyring = dns.tsigkeyring.from_text({config.tsig_key_name: config.tsig_secret})
        self.resolvers = config.resolvers

    @property
    def where(self) -> str:
        return f"{self.server[0]}:{self.server[1]}"

    def servers(self, name: str) -> tuple[tuple[str, int], ...]:
        return self.resolvers or (self.server,)

    def zone_of(self, name: str) -> str:
        """The configured zone, else the one whose SOA the server reports for ``name``."""
        if self.zone:
            if name != self.zone and not name.endswith("." + self.zone):
                raise DnsProblem(f"rfc2136: TXT {name} is not in zone {self.zone} (set acme.dns.zone, or leave it "
                                 f"out to find the zone from the SOA)", definite=True)
            return self.zone
        try:
            response = ask(self.server, name, "SOA")
        except (dns.exception.DNSException, OSError) as e:
            raise DnsProblem(f"rfc2136: looking up the zone of {name} at {self.where}: {e or type(e).__name__}",
                             definite=True) from None
        if response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise DnsProblem(f"rfc2136: looking up the zone of {name} at {self.where}: the server answered "
                             f"{dns.rcode.to_text(response.rcode())}", definite=True)
        for rrset in response.answer + response.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                return str(rrset.name).rstrip(".")
        raise DnsProblem(f"rfc2136: {self.where} reports no SOA for {name}: is it authoritative for that zone?",
                         definite=True)

    def present(self, record: Record) -> str:
        self._update(record, add=True)
        return record.target

    def cleanup(self, record: Record) -> None:
        self._update(record, add=False)

    def _update(self, record: Record, add: bool) -> None:
        zone = self.zone_of(record.target)
        update = dns.update.UpdateMessage(zone, keyring=self.keyring, keyname=dns.name.from_text(self.key_name),
                                          keyalgorithm=self.algorithm)
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, json.dumps(record.value))
        owner = dns.name.from_text(record.target)
        if add:
            update.add(owner, TTL, rdata)
        else:
            update.delete(owner, rdata)
        what = f"rfc2136: {'adding' if add else 'removing'} TXT {record.target} (zone {zone}) at {self.where}"
        try:
            response = dns.query.tcp(update, _address(self.server[0]), port=self.server[1], timeout=QUERY_TIMEOUT)
        except tuple(PEER_ERRORS) as e:
            hint = " (wrong tsig_secret_file?)" if isinstance(e, dns.tsig.PeerBadSignature) else \
                " (is the key name known there?)" if isinstance(e, dns.tsig.PeerBadKey) else ""
            raise DnsProblem(f"{what}: the server answered {PEER_ERRORS[type(e)]} for key "
                             f"{self.key_name}{hint}", definite=True) from None
        except dns.exception.Timeout:
            raise DnsProblem(f"{what}: no answer in {QUERY_TIMEOUT:g}s") from None
        except ConnectionRefusedError:
            raise DnsProblem(f"{what}: connection refused", definite=True) from None
        except (OSError, dns.exception.DNSException) as e:
            raise DnsProblem(f"{what}: {e or type(e).__name__}") from None
        if response.rcode() != dns.rcode.NOERROR:
            raise DnsProblem(f"{what}: the server answered {dns.rcode.to_text(response.rcode())}", definite=True)


class AcmeDns:
    """joohoi/acme-dns: ``POST {api}/update``; the record lives at the domain's ``fulldomain``."""

    name = "acme-dns"

    def __init__(self, config: AcmeDnsConfig) -> None:
        assert config.api is not None
        self.api = config.api.rstrip("/")
        self.credentials = config.credentials
        self.file = config.credentials_file
        self.resolvers = config.resolvers

    def servers(self, name: str) -> tuple[tuple[str, int], ...]:
        return self.resolvers or authoritative_servers(name)

    def present(self, record: Record) -> str:
        account = self.credentials.get(record.domain) or self.credentials.get("*." + record.domain)
        if account is None:
            raise DnsProblem(f"acme-dns: no account for {record.domain} in {self.file}", definite=True)
        body = json.dumps({"subdomain": account["subdomain"], "txt": record.value}).encode()
        request = urllib.request.Request(f"{self.api}/update", data=body, method="POST", headers={
            "X-Api-User": account["username"], "X-Api-Key": account["password"], "Content-Type": "application/json"})
        what = f"acme-dns: updating TXT {account['fulldomain']} (for {record.name}) at {self.api}"
        try:
            with urllib.request.urlopen(request, timeout=QUERY_TIMEOUT * 2) as response:
                response.read()
        except urllib.error.HTTPError as e:
            detail = e.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
            raise DnsProblem(f"{what}: HTTP {e.code} {detail}", definite=True) from None
        except (OSError, urllib.error.URLError) as e:
            raise DnsProblem(f"{what}: {getattr(e, 'reason', None) or e}", definite=True) from None
        return account["fulldomain"].rstrip(".").lower()

    def cleanup(self, record: Record) -> None:
        """acme-dns has no removal: it keeps the two newest values, which the next order replaces."""


class Exec:
    """``program present|cleanup FQDN VALUE``, as lego's exec provider calls it."""

    name = "exec"

    def __init__(self, config: AcmeDnsConfig) -> None:
        assert config.program is not None
        self.program = config.program
        self.resolvers = config.resolvers

    def servers(self, name: str) -> tuple[tuple[str, int], ...]:
        return self.resolvers or authoritative_servers(name)

    def present(self, record: Record) -> str:
        self._run("present", record)
        return record.target

    def cleanup(self, record: Record) -> None:
        self._run("cleanup", record)

    def _run(self, action: str, record: Record) -> None:
        fqdn = record.target + "."
        what = f"exec: {self.program} {action} {fqdn}"
        try:
            done = subprocess.run([self.program, action, fqdn, record.value], capture_output=True, text=True,
                                  timeout=HOOK_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DnsProblem(f"{what}: still running after {HOOK_TIMEOUT:g}s (killed)") from None
        except OSError as e:
            raise DnsProblem(f"{what}: cannot run it: {e.strerror}", definite=True) from None
        if done.returncode != 0:
            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
            stderr = " | ".join(lines[-3:])[-400:] or "nothing on stderr"
            raise DnsProblem(f"{what}: exit status {done.returncode}: {stderr}")


PROVIDERS = {"rfc2136": Rfc2136, "acme-dns": AcmeDns, "exec": Exec}


def provider_for(config: AcmeDnsConfig):
    """The provider ``[acme.dns]`` names (a :class:`edge.acme.dns01.DnsProvider`)."""
    return PROVIDERS[config.provider](config)
