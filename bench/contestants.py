"""The programs compared: edge, HAProxy, nginx (stream + http) and sslh, with equivalent configs.

Each contestant is started for one scenario on fresh loopback ports and
forwards to the same nginx origin.  Scenario modes:

- ``passthrough``: TLS by SNI (``localhost``) to the origin's TLS port, untouched;
- ``tcp``: plain TCP forward (the SSH door) to the origin's HTTP port;
- ``terminate``: TLS terminated with the given certificate, HTTP/1.1 (and h2) to the origin's HTTP port.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.procs import Program, free_port, wait_listening  # noqa: E402


class Contestant:
    name = "?"
    modes = ("passthrough", "tcp", "terminate")

    def __init__(self, tmp: Path, mode: str, origin, cert: Path, key: Path, routes: int = 1) -> None:
        self.tmp, self.mode, self.origin, self.cert, self.key, self.routes = tmp, mode, origin, cert, key, routes
        self.port = free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        self.program = self.start()
        try:
            wait_listening(self.port, proc=self.program.proc, timeout=30)
        except RuntimeError as e:
            raise RuntimeError(f"{self.name} ({mode}) did not start: {e}\n{self.program.log()[-2000:]}") from None
        self.ready()

    def ready(self) -> None:
        """Wait until every process of the contestant accepts."""

    @property
    def pid(self) -> int:
        return self.program.pid

    def pids(self) -> list[int]:
        """Every process of the contestant (nginx and HAProxy may fork)."""
        out = subprocess.run(["pgrep", "-g", str(os.getpgid(self.pid))], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()] or [self.pid]

    def stop(self) -> None:
        self.program.stop()


class Edge(Contestant):
    name = "edge"
    workers = 1

    def start(self) -> Program:
        door = {"passthrough": "https", "terminate": "https", "tcp": "ssh"}[self.mode]
        listen = {d: "[]" for d in ("ssh", "http", "https")}
        listen[door] = f'["127.0.0.1:{self.port}"]'
        extra_routes = "".join(
            f'[[routes]]\nhosts = ["h{i}.bench.test", "*.w{i}.bench.test"]\ntls = "passthrough"\nbackend = "pass"\n'
            for i in range(self.routes - 1))
        config = self.tmp / "edge.toml"
        config.write_text(textwrap.dedent(f"""
            [edge]
            workers = {self.workers}
            state_dir = "{self.tmp / 'state'}"
            certs_dir = "{self.tmp / 'certs'}"
            [listen]
            ssh = {listen['ssh']}
            http = {listen['http']}
            https = {listen['https']}
            [timeouts]
            idle = "10m"
            [ssh]
            backend = "plain"
            [backends.plain]
            servers = ["127.0.0.1:{self.origin.http}"]
            [backends.pass]
            servers = ["127.0.0.1:{self.origin.tls}"]
            [backends.web]
            servers = ["http://127.0.0.1:{self.origin.http}"]
            [[routes]]
            hosts = ["localhost"{', "*"' if self.mode == 'terminate' else ''}]
            tls = "{'edge' if self.mode == 'terminate' else 'passthrough'}"
            backend = "{'web' if self.mode == 'terminate' else 'pass'}"
            """) + extra_routes)
        certs = self.tmp / "certs"
        certs.mkdir(exist_ok=True)
        (certs / "localhost.pem").write_bytes(self.cert.read_bytes() + self.key.read_bytes())
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return Program([sys.executable, "-m", "twisted", "--log-format", "text", "--log-level", "warn", "edge",
                        "--config", str(config)], self.tmp / "edge.log", env=env, cwd=self.tmp)


class EdgeWorkers(Edge):
    """edge with ``[edge] workers = 2``: one process per core, SO_REUSEPORT."""

    name = "edge x2"
    workers = 2

    def ready(self) -> None:
        import time

        deadline = time.monotonic() + 20
        while len(self.pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # the second worker imports, binds with SO_REUSEPORT and starts its reactor


class HAProxy(Contestant):
    name = "haproxy"

    def start(self) -> Program:
        o = self.origin
        frontends = {
            "passthrough": f"""
                frontend fe
                  mode tcp
                  bind 127.0.0.1:{self.port}
                  tcp-request inspect-delay 5s
                  tcp-request content accept if {{ req_ssl_hello_type 1 }}
                  use_backend be if {{ req_ssl_sni -i localhost }}
                backend be
                  mode tcp
                  server o 127.0.0.1:{o.tls}
                """,
            "tcp": f"""
                frontend fe
                  mode tcp
                  bind 127.0.0.1:{self.port}
                  default_backend be
                backend be
                  mode tcp
                  server o 127.0.0.1:{o.http}
                """,
            "terminate": f"""
                frontend fe
                  mode http
                  bind 127.0.0.1:{self.port} ssl crt {self.tmp / 'both.pem'} alpn h2,http/1.1
                  option forwardfor
                  default_backend be
                backend be
                  mode http
                  http-reuse always
                  server o 127.0.0.1:{o.http}
                """,
        }
        (self.tmp / "both.pem").write_bytes(self.cert.read_bytes() + self.key.read_bytes())
        config = self.tmp / "haproxy.cfg"
        config.write_text(textwrap.dedent("""
            global
              maxconn 9000
              nbthread 1
            defaults
              timeout connect 5s
              timeout client 600s
              timeout server 600s
            """) + textwrap.dedent(frontends[self.mode]))
        return Program(["haproxy", "-db", "-f", str(config)], self.tmp / "haproxy.log")


class Nginx(Contestant):
    name = "nginx"

    def start(self) -> Program:
        o = self.origin
        blocks = {
            "passthrough": f"""
                stream {{
                  map $ssl_preread_server_name $up {{ localhost 127.0.0.1:{o.tls}; default 127.0.0.1:1; }}
                  server {{ listen 127.0.0.1:{self.port}; ssl_preread on; proxy_pass $up; }}
                }}
                """,
            "tcp": f"stream {{ server {{ listen 127.0.0.1:{self.port}; proxy_pass 127.0.0.1:{o.http}; }} }}\n",
            "terminate": f"""
                http {{
                  access_log off;
                  # As HAProxy and edge: no cap on requests per connection (nginx's default 1000 ends an h2load
                  # connection with GOAWAY, and h2load does not reconnect), a 10 minute idle timeout, TLS 1.3.
                  keepalive_requests 1000000; keepalive_timeout 600s; ssl_protocols TLSv1.2 TLSv1.3;
                  upstream o {{ server 127.0.0.1:{o.http}; keepalive 64; }}
                  server {{
                    listen 127.0.0.1:{self.port} ssl http2;
                    ssl_certificate {self.cert}; ssl_certificate_key {self.key};
                    location / {{ proxy_pass http://o; proxy_http_version 1.1; proxy_set_header Connection "";
                                 proxy_set_header X-Forwarded-For $remote_addr; }}
                  }}
                }}
                """,
        }
        config = self.tmp / "nginx.conf"
        (self.tmp / "logs").mkdir(exist_ok=True)
        load = "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n" if "stream" in blocks[self.mode] else ""
        config.write_text(load + "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log stderr warn;\n"
                          "pid nginx.pid;\nevents { worker_connections 19000; }\n" + textwrap.dedent(blocks[self.mode]))
        return Program(["nginx", "-p", str(self.tmp), "-c", str(config)], self.tmp / "nginx.log")


class Sslh(Contestant):
    name = "sslh"
    modes = ("passthrough", "tcp")

    def start(self) -> Program:
        o = self.origin
        target = ["--tls", f"127.0.0.1:{o.tls}"] if self.mode == "passthrough" else ["--anyprot", f"127.0.0.1:{o.http}"]
        return Program(["sslh-select", "--foreground", "--listen", f"127.0.0.1:{self.port}", *target],
                       self.tmp / "sslh.log")


CONTESTANTS = (Edge, EdgeWorkers, HAProxy, Nginx, Sslh)
