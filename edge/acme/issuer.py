"""Blocking ACME steps, run in Twisted's thread pool with the ``acme`` library's ClientV2.

Nothing here touches the reactor directly: challenge answers are published
through ``publish``/``withdraw`` callables the service wraps with
``blockingCallFromThread``.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Callable, Sequence

import josepy as jose
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge.acme.dns01 import DnsProblem
from edge.config import AcmeConfig

USER_AGENT = "edge (https://github.com/) acme-python"


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """RFC 8737 response (the acme package no longer ships this challenge)."""

    typ = "tls-alpn-01"


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: jose.JWK, **unused: Any) -> str:
        return self.key_authorization(account_key)


class AcmeProblem(Exception):
    """One line for the log: what the CA said."""


def describe(error: BaseException) -> str:
    """The CA's problem document (or the failure) as one line."""
    if isinstance(error, errors.ValidationError):
        parts = []
        for authzr in error.failed_authzrs:
            for challb in authzr.body.challenges:
                if challb.error is not None:
                    parts.append(f"{authzr.body.identifier.value}: {challb.error.typ} {challb.error.detail}")
        return "validation failed: " + "; ".join(parts)
    if isinstance(error, DnsProblem):  # already one line naming the provider, the record and the answer
        return str(error)
    if isinstance(error, messages.Error):
        return f"{error.typ}: {error.detail}"
    if isinstance(error, errors.TimeoutError):
        return "the order did not complete in time"
    if type(error).__name__ in ("ConnectionError", "SSLError", "Timeout", "ConnectTimeout", "ReadTimeout"):
        cause = re.search(r"\[Errno -?\d+\] ([^'\")]+)|(certificate verify failed[^'\")]*)", str(error))
        reason = next((g for g in cause.groups() if g), "").strip() if cause else type(error).__name__
        return f"cannot reach the ACME server: {reason}"
    return f"{type(error).__name__}: {error}".replace("\n", " ")


class AcmeSession:
    """An account at one ACME server; built (and registered) in a worker thread."""

    def __init__(self, config: AcmeConfig, account_key: ec.EllipticCurvePrivateKey) -> None:
        self.config = config
        self.key = jose.JWKEC(key=account_key)
        verify: Any = config.ca_bundle or True
        net = client.ClientNetwork(self.key, alg=jose.ES256, user_agent=USER_AGENT, verify_ssl=verify)
        directory = client.ClientV2.get_directory(config.directory, net)
        self.client = client.ClientV2(directory, net)
        eab = None
        if config.eab_kid:
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=self.key.public_key(), kid=config.eab_kid,
                hmac_key=config.eab_hmac_key, directory=directory)
        registration = messages.NewRegistration.from_data(
            email=config.email, terms_of_service_agreed=True, external_account_binding=eab)
        try:
            self.client.new_account(registration)
        except errors.ConflictError as existing:  # the key is known: reuse that account
            regr = messages.RegistrationResource(uri=existing.location, body=registration)
            self.client.net.account = self.client.query_registration(regr)
        finally:
            self.hang_up()

    def hang_up(self) -> None:
        """Close the kept-alive connections to the CA between uses (hours apart): an idle one would be
        held, unread, in CLOSE-WAIT once the CA closed it.  The next request opens a new one."""
        self.client.net.session.close()

    def obtain(self, identifiers: str | Sequence[tuple[str, str]], publish: Callable[..., None],
               withdraw: Callable[..., None], dns: Any = None) -> tuple[bytes, Any]:
        """Order one certificate, prove control of its names, finalise; return (fullchain PEM, key).

        ``identifiers`` is a host name (proved with ``[acme] challenge``) or
        ``(name, challenge)`` pairs, e.g. ``[("*.x.test", "dns-01"), ("x.test", "http-01")]``.
        HTTP-01 and TLS-ALPN-01 answers go through ``publish``/``withdraw``; DNS-01
        values through ``dns`` (a :class:`edge.acme.dns_solver.Dns01Solver`), all
        written and propagated before the CA is told, and removed afterwards.
        """
        if isinstance(identifiers, str):
            identifiers = [(identifiers, self.config.challenge)]
        wanted = dict(identifiers)
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        csr = crypto_util.make_csr(key_pem, list(wanted))
        order = self.client.new_order(csr, profile=self.config.profile) if self.config.profile \
            else self.client.new_order(csr)
        published = []
        dns_values: list[tuple[str, str]] = []
        dns_answers = []
        dns_records: list[Any] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue
                name = ("*." if authz.body.wildcard else "") + authz.body.identifier.value
                kind = wanted.get(name, self.config.challenge)
                challb = next((c for c in authz.body.challenges if c.chall.typ == kind), None)
                if challb is None:
                    raise AcmeProblem(f"the CA offers no {kind} challenge for {name}")
                response, validation = challb.chall.response_and_validation(self.key)
                if kind == "dns-01":
                    if dns is None:
                        raise AcmeProblem(f"{name} needs dns-01, and [acme.dns] names no DNS provider")
                    dns_values.append((name, validation))
                    dns_answers.append((challb, response))
                    continue
                token = challb.chall.encode("token")
                publish(kind, name, token, validation)
                published.append((kind, name, token))
                self.client.answer_challenge(challb, response)
            if dns_values:
                dns.present(dns_values, dns_records)
                for challb, response in dns_answers:
                    self.client.answer_challenge(challb, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=90)
            order = self.client.poll_and_finalize(order, deadline)
        finally:
            for item in published:
                withdraw(*item)
            if dns_records:
                dns.cleanup(dns_records)
            self.hang_up()
        return order.fullchain_pem.encode("ascii"), key

    def renewal_time(self, chain_pem: bytes) -> datetime.datetime | None:
        """The CA's suggested renewal time (ARI), if it offers one."""
        try:
            when, _ = self.client.renewal_time(chain_pem)
        except Exception:
            return None
        finally:
            self.hang_up()
        return when
