"""Real origin servers for the tests: sshd, openssl s_server, nginx, HAProxy."""

from __future__ import annotations

import getpass
import shutil
import subprocess
import textwrap
from pathlib import Path

from tests.support.procs import Program, free_port, wait_listening


class Sshd(Program):
    """OpenSSH's sshd on a loopback port, accepting one test key for this user."""

    def __init__(self, tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user = getpass.getuser()
        host_key, self.client_key = tmp / "host_ed25519", tmp / "client_ed25519"
        for key in (host_key, self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        authorized = tmp / "authorized_keys"
        shutil.copy(f"{self.client_key}.pub", authorized)
        authorized.chmod(0o600)
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
        config = tmp / "sshd_config"
        config.write_text(textwrap.dedent(f"""\
            Port {self.port}
            ListenAddress 127.0.0.1
            HostKey {host_key}
            PidFile {tmp / 'sshd.pid'}
            AuthorizedKeysFile {authorized}
            StrictModes no
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            UsePAM no
            PermitRootLogin prohibit-password
            LogLevel VERBOSE
            """))
        super().__init__(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], tmp / "sshd.log")
        wait_listening(self.port, proc=self.proc)

    def ssh_args(self, port: int) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-p", str(port), "-i", str(self.client_key),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"]

    def git_ssh_command(self) -> str:
        return " ".join(self.ssh_args(0)[:3] + self.ssh_args(0)[5:])  # port comes from the URL


class OpenSSLServer(Program):
    """``openssl s_server -www``: a TLS origin answering with its own status page."""

    def __init__(self, tmp: Path, cert: Path, key: Path, name: str = "s_server") -> None:
        self.port = free_port()
        super().__init__(
            ["openssl", "s_server", "-accept", f"127.0.0.1:{self.port}", "-cert", str(cert),
             "-key", str(key), "-www", "-naccept", "1000000"],
            tmp / f"{name}.log",
        )
        wait_listening(self.port, proc=self.proc)


class Nginx(Program):
    """nginx with the given ``http { server { ... } }`` body, on its own prefix."""

    def __init__(self, tmp: Path, servers: str, name: str = "nginx") -> None:
        prefix = tmp / name
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / "logs").mkdir(exist_ok=True)
        config = prefix / "nginx.conf"
        config.write_text(textwrap.dedent("""\
            daemon off;
            master_process off;
            worker_processes 1;
            error_log stderr info;
            pid nginx.pid;
            events { worker_connections 1024; }
            http {
              access_log off;
              client_body_temp_path tmp_body;
              proxy_temp_path tmp_proxy;
              fastcgi_temp_path tmp_fastcgi;
              uwsgi_temp_path tmp_uwsgi;
              scgi_temp_path tmp_scgi;
              default_type text/plain;
            """) + textwrap.indent(textwrap.dedent(servers), "  ") + "}\n")
        super().__init__(["nginx", "-p", str(prefix), "-c", str(config)], tmp / f"{name}.log")


class HAProxy(Program):
    """HAProxy with the given configuration sections appended to sane defaults."""

    def __init__(self, tmp: Path, sections: str, name: str = "haproxy") -> None:
        config = tmp / f"{name}.cfg"
        config.write_text(textwrap.dedent("""\
            global
              maxconn 1000
            defaults
              timeout connect 5s
              timeout client 30s
              timeout server 30s
            """) + textwrap.dedent(sections))
        super().__init__(["haproxy", "-db", "-f", str(config)], tmp / f"{name}.log")
