"""Build the edge's service tree from a config file."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService

from edge.config import Config, ConfigError, load
from edge.dispatch import DispatchFactory
from edge.listeners import ListenerService
from edge.acme.responders import ChallengeResponders
from edge.acme.service import AcmeService
from edge.admin import admin_site
from edge.certs.files import CertificateFileError
from edge.runtime import MissingCertificate, Runtime


class StartupError(Exception):
    """Start-up cannot go on; the message is one line for the operator."""


class EdgeService(MultiService):
    """The running edge: its live runtime and one listener per address."""

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self.responders = ChallengeResponders()
        try:
            self.runtime = Runtime(config, reactor, responders=self.responders)
        except MissingCertificate as e:
            raise StartupError(f"{config.path}: {e}") from None
        except CertificateFileError as e:
            raise StartupError(f"{config.path}: edge.certs_dir: {e}") from None
        except OSError as e:
            raise StartupError(f"{config.path}: edge.state_dir: {e.strerror or e}: {e.filename}") from None
        if config.acme is not None:
            AcmeService(config, self.runtime.certificates, self.responders, reactor).setServiceParent(self)
        doors = [(door, DispatchFactory(lambda: self.runtime, door), getattr(config.listen, door))
                 for door in ("ssh", "http", "https")]
        if config.admin is not None:
            doors.append(("admin", admin_site(lambda: self.runtime), (config.admin,)))
        for door, factory, addresses in doors:
            for address in addresses:
                try:
                    ListenerService(reactor, door, address, factory).setServiceParent(self)
                except OSError as e:
                    self._close_sockets()
                    key = "admin.listen" if door == "admin" else f"listen.{door}"
                    raise StartupError(f"{config.path}: {key}: cannot listen on {address}: {e.strerror or e}") from None

    def _close_sockets(self) -> None:
        for child in self:
            if child.socket is not None:
                child.socket.close()


def make_service(config_path: str, reactor: Any = None) -> EdgeService:
    """Load ``config_path`` and bind its listeners; raise :class:`StartupError`."""
    if reactor is None:
        from twisted.internet import reactor  # noqa: F811
    try:
        config = load(config_path)
    except ConfigError as e:
        raise StartupError(str(e)) from None
    return EdgeService(config, reactor)
