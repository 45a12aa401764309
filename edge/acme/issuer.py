# -*- test-case-name: tests.e2e.test_acme, tests.e2e.test_acme_resilience -*-
"""Blocking ACME steps, run in Twisted's thread pool with the ``acme`` library's ClientV2.

Nothing here touches the reactor: challenge answers are published through
``publish``/``withdraw`` callables that are safe from any thread and never
wait for the reactor.  Every wait between two requests is on ``cancel``
(a stop sets it), so a stopping edge is not held by an order in progress.
"""

from __future__ import annotations

import datetime
import re
import threading
from typing import Any, Callable, Sequence

import josepy as jose
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge.acme.dns01 import DnsProblem
from edge.acme.locks import Resume, resume_action
from edge.acme.threads import Cancelled
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
    if type(error).__module__.split(".")[0] == "redis":  # the shared storage, not the CA
        return f"the shared storage (Redis) failed: {type(error).__name__}: {error}".replace("\n", " ")
    if isinstance(error, errors.TimeoutError):
        return "the order did not complete in time"
    if type(error).__name__ in ("ConnectionError", "SSLError", "Timeout", "ConnectTimeout", "ReadTimeout"):
        cause = re.search(r"\[Errno -?\d+\] ([^'\")]+)|(certificate verify failed[^'\")]*)", str(error))
        reason = next((g for g in cause.groups() if g), "").strip() if cause else type(error).__name__
        return f"cannot reach the ACME server: {reason}"
    return f"{type(error).__name__}: {error}".replace("\n", " ")


BAD_NONCE_ROUNDS = 6  # each round is ClientNetwork.post's two tries: 12 nonces before a step gives up


class PatientNetwork(client.ClientNetwork):
    """ClientNetwork that retries a request the CA refused with badNonce a few more times (the library
    tries twice): a fresh nonce is all it takes, and failing the whole order for it wastes the order."""

    def post(self, *args: Any, **kwargs: Any) -> Any:
        for round_ in range(BAD_NONCE_ROUNDS):
            try:
                return super().post(*args, **kwargs)
            except messages.Error as error:
                if error.code != "badNonce" or round_ == BAD_NONCE_ROUNDS - 1:
                    raise


class AcmeSession:
    """An account at one ACME server; built (and registered) in a worker thread."""

    def __init__(self, config: AcmeConfig, account_key: ec.EllipticCurvePrivateKey,
                 cancel: threading.Event | None = None) -> None:
        self.config = config
        self.cancel = cancel if cancel is not None else threading.Event()
        self.key = jose.JWKEC(key=account_key)
        verify: Any = config.ca_bundle or True
        net = PatientNetwork(self.key, alg=jose.ES256, user_agent=USER_AGENT, verify_ssl=verify)
        directory = client.ClientV2.get_directory(config.directory, net)
        self.client = client.ClientV2(directory, net)
        eab = None
        if config.eab_kid and config.eab_hmac_key is not None:  # both or neither (the config checks)
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
               withdraw: Callable[..., None], dns: Any = None,
               keep: Callable[[str, bytes, list[str]], None] | None = None) -> tuple[bytes, Any]:
        """Order one certificate, prove control of its names, finalise; return (fullchain PEM, key).

        ``identifiers`` is a host name (proved with ``[acme] challenge``) or
        ``(name, challenge)`` pairs, e.g. ``[("*.x.test", "dns-01"), ("x.test", "http-01")]``.
        HTTP-01 and TLS-ALPN-01 answers go through ``publish``/``withdraw``; DNS-01
        values through ``dns`` (a :class:`edge.acme.dns_solver.Dns01Solver`), all
        written and propagated before the CA is told, and removed afterwards.
        ``keep(order URL, key PEM, names)`` is called once the names are proved,
        before finalizing: from then on the CA may issue, and what it issues can
        be fetched again with :meth:`finish`.
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
            order = self._poll_authorizations(order, deadline)
            if keep is not None:
                keep(order.uri, key_pem, list(wanted))
            order = self._finalize(order, deadline)
        finally:
            for item in published:
                withdraw(*item)
            if dns_records:
                dns.cleanup(dns_records)
            self.hang_up()
        return order.fullchain_pem.encode("ascii"), key

    def finish(self, url: str, key_pem: bytes, names: Sequence[str]) -> tuple[bytes, Any] | None:
        """Finish an order recorded before it was finalized: download the certificate the CA issued (or
        finalize, or wait for it); None if the CA no longer has the order, or it cannot be finished."""
        try:
            response = self.client._post_as_get(url)
            body = messages.Order.from_json(response.json())
            have = sorted(i.value for i in body.identifiers)
            action = resume_action(body.status.name if body.status is not None else None,
                                   have == sorted(names))
            if action is Resume.DISCARD:
                return None
            key = serialization.load_pem_private_key(key_pem, None)
            order = messages.OrderResource(body=body, uri=url, authorizations=[],
                                           csr_pem=crypto_util.make_csr(key_pem, list(names)))
            if action is Resume.DOWNLOAD:
                if body.certificate is None:
                    return None
                return self.client._post_as_get(body.certificate).text.encode("ascii"), key
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=90)
            return self._finalize(order, deadline).fullchain_pem.encode("ascii"), key
        except errors.TimeoutError:
            raise  # still processing: the record is kept, and tried again
        except (messages.Error, errors.Error):
            return None  # gone, another account's, or refused: order afresh
        finally:
            self.hang_up()

    def _pause(self, seconds: float) -> None:
        """Wait between two polls; raise Cancelled at once if the edge is stopping."""
        if self.cancel.wait(max(0.0, seconds)):
            raise Cancelled()

    def _poll_authorizations(self, order: messages.OrderResource, deadline: datetime.datetime
                             ) -> messages.OrderResource:
        """ClientV2.poll_authorizations, with cancellable waits."""
        done = []
        for authzr in order.authorizations:
            while True:
                self._pause(0)
                authzr, _ = self.client.poll(authzr)
                if authzr.body.status != messages.STATUS_PENDING:
                    done.append(authzr)
                    break
                if datetime.datetime.now() >= deadline:
                    raise errors.TimeoutError()
                self._pause(1)
        failed = [authzr for authzr in done if authzr.body.status != messages.STATUS_VALID]
        if failed:
            raise errors.ValidationError(failed)
        return order.update(authorizations=done)

    def _finalize(self, order: messages.OrderResource, deadline: datetime.datetime) -> messages.OrderResource:
        """ClientV2.finalize_order, with cancellable waits."""
        self._pause(0)
        try:
            self.client.begin_finalization(order)
        except messages.Error as e:
            if e.code != "orderNotReady":
                raise
        while datetime.datetime.now() < deadline:
            self._pause(1)
            response = self.client._post_as_get(order.uri)
            body = messages.Order.from_json(response.json())
            if body.status == messages.STATUS_INVALID:
                if body.error is not None:
                    raise errors.IssuanceError(body.error)
                raise errors.Error("the CA refused to issue the certificate, saying nothing more")
            if body.status == messages.STATUS_READY:
                self.client.begin_finalization(order)
            elif body.status == messages.STATUS_VALID and body.certificate is not None:
                certificate = self.client._post_as_get(body.certificate)
                return order.update(body=body, fullchain_pem=certificate.text)
        raise errors.TimeoutError()

    def offers_renewal_info(self) -> bool:
        """Whether the CA's directory has ARI's renewalInfo."""
        try:
            self.client.directory["renewalInfo"]
        except KeyError:
            return False
        return True

    def renewal_window(self, chain_pem: bytes
                       ) -> tuple[datetime.datetime, datetime.datetime, float] | None:
        """The CA's suggested renewal window for the leaf of ``chain_pem`` and the seconds to wait before
        asking again (``Retry-After``, 6 hours if absent), via ARI (RFC 9773); None if the CA has no
        renewalInfo.  Network errors are raised (the caller keeps what it had)."""
        try:
            base = self.client.directory["renewalInfo"]
        except KeyError:
            return None
        leaf = x509.load_pem_x509_certificate(chain_pem)
        try:
            response = self.client.net.get(base.rstrip("/") + "/" + client._renewal_info_path_component(leaf),
                                           content_type="application/json")
        finally:
            self.hang_up()
        info = messages.RenewalInfo.from_json(response.json())
        retry = response.headers.get("Retry-After", "")
        seconds = float(retry) if retry.strip().isdigit() else 6 * 3600.0
        window = info.suggested_window
        return window.start, window.end, seconds

    def renewal_time(self, chain_pem: bytes) -> datetime.datetime | None:
        """The CA's suggested renewal time (ARI), if it offers one."""
        try:
            when, _ = self.client.renewal_time(chain_pem)
        except Exception:
            return None
        finally:
            self.hang_up()
        return when
