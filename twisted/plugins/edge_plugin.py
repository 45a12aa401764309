"""The ``twist edge`` plugin: parse options, build the service; no logic here."""

import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = (
        "edge: one process on ports 22, 80 and 443. SSH goes to the git server, "
        "port 80 redirects to HTTPS, and port 443 is dispatched by what the client "
        "sends first: TLS by SNI (passthrough or terminated), SSH, or plain HTTP. "
        "Signals: HUP re-reads the configuration (all or nothing), TERM stops accepting and drains "
        "open connections for [timeouts] drain. Logs: twist --log-format text|json --log-level info|warn "
        "edge ... Everything else: README.md, shipped with edge."
    )
    optParameters = [
        ["config", "c", "/etc/edge/edge.toml", "The TOML configuration file."],
        ["worker", None, 0, "Internal: the worker number, for [edge] workers > 1.", int],
    ]
    optFlags = [
        ["check", None, "Check the configuration (and its certificate files) as start-up would, bind nothing, "
                        "print one line and exit: 0 if it is fine, 2 if not (like nginx -t, haproxy -c)."],
    ]

    def getUsage(self, width=None):
        """Twisted's help, without the internal --worker option."""
        lines = super().getUsage(width).split("\n")
        out, skipping = [], False
        for line in lines:
            if line.lstrip().startswith("--worker="):
                skipping = True
                continue
            if skipping and line.startswith(" " * 10) and not line.lstrip().startswith("-"):
                continue  # the option's wrapped description
            skipping = False
            out.append(line)
        return "\n".join(out)

    def opt_version(self):
        """Print edge's version and exit."""
        from edge import __version__

        sys.stdout.write(f"edge {__version__}\n")
        raise SystemExit(0)


@implementer(IServiceMaker, IPlugin)
class EdgeServiceMaker:
    tapname = "edge"
    description = "Multi-protocol edge server: SNI passthrough, TLS termination, SSH and HTTP on 22/80/443."
    options = Options

    def makeService(self, options):
        from twisted.logger import LogLevel

        from edge.ops.logs import observer_factory
        from edge.app.service import StartupError, check_config, make_service

        if options["check"]:
            try:
                sys.stdout.write(check_config(options["config"]) + "\n")
            except StartupError as e:
                sys.stderr.write(f"edge: {e}\n")
                raise SystemExit(2)
            raise SystemExit(0)
        twist_options = getattr(options, "parent", None) or {}  # twist's own options: --log-level
        if "fileLogObserverFactory" in twist_options:  # --log-format: edge's clean text or JSON lines
            twist_options["fileLogObserverFactory"] = observer_factory(twist_options["fileLogObserverFactory"])
        try:
            return make_service(options["config"], worker=options["worker"],
                                log_level=twist_options.get("logLevel", LogLevel.info))
        except StartupError as e:
            sys.stderr.write(f"edge: {e}\n")
            raise SystemExit(2)


serviceMaker = EdgeServiceMaker()
