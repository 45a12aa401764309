"""Headless Chromium through a terminated route: a page of 100 sub-resources and a WebSocket, all over HTTP/2.

Chromium opens the WebSocket on the page's HTTP/2 connection with an extended
CONNECT (RFC 8441), since edge advertises SETTINGS_ENABLE_CONNECT_PROTOCOL;
edge relays it to the backend's HTTP/1.1 Upgrade.  The edge's JSON access log
shows every request arrived over HTTP/2, the WebSocket as a CONNECT.
"""

from __future__ import annotations

import base64
import subprocess
import sys

from tests.support.config import config, route
from tests.support.procs import Program, free_port, wait_listening
from tests.support.servers import Nginx
from tests.e2e.test_http_proxy import ECHO_SERVER
from tests.e2e.test_observability import events

PIXEL = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
PAGE = """<!doctype html><html><head><title>start</title></head><body>{images}<p id=out>waiting</p>
<script>
window.addEventListener('load', () => {{
  const loaded = Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length;
  const ws = new WebSocket('wss://' + location.host + '/ws/chat');
  ws.onopen = () => ws.send('ping over h2');
  const report = (text) => {{ document.getElementById('out').textContent = text;
                             fetch('/done/' + encodeURIComponent(text)); }};  // the test waits for this request
  ws.onmessage = (m) => {{ report('images=' + loaded + ' echo=' + m.data); ws.close(); }};
  ws.onerror = () => {{ report('images=' + loaded + ' ws-error'); }};
}});
</script></body></html>"""


def test_chromium_loads_a_page_and_opens_a_websocket_over_http2(edge, start, tmp_path):
    www = tmp_path / "www"
    (www / "img").mkdir(parents=True)
    for n in range(100):
        (www / "img" / f"{n}.png").write_bytes(PIXEL)
    (www / "index.html").write_text(PAGE.format(images="".join(f'<img src="/img/{n}.png">' for n in range(100))))
    files = free_port()
    nginx = start(Nginx, tmp_path, f"server {{ listen 127.0.0.1:{files}; root {www}; }}")
    wait_listening(files, proc=nginx.proc)
    echo_port = free_port()
    script = tmp_path / "echo.py"
    script.write_text(ECHO_SERVER)
    echo = start(Program, [sys.executable, str(script), str(echo_port)], tmp_path / "echo.log")
    wait_listening(echo_port, proc=echo.proc)
    e = edge(config(backends={"files": f"http://127.0.0.1:{files}", "chat": f"http://127.0.0.1:{echo_port}"},
                    routes=[route(backend="files"), route(backend="chat", paths=["/ws"])]), log_format="json")
    # No --dump-dom with a virtual-time budget: on a busy machine the budget ran out before the WebSocket
    # answered. The page reports its result with a request of its own, which the test waits for.
    browser = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium'}", "--ignore-certificate-errors",
         "--host-resolver-rules=MAP app.example.test 127.0.0.1", "--remote-debugging-port=0",
         f"https://app.example.test:{e.https_port}/index.html"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        line = e.wait_log('"/done/', timeout=60)
    finally:
        browser.terminate()
        browser.wait(30)
    assert "/done/images%3D100%20echo%3Dping%20over%20h2" in line, line[-3000:]
    e.wait_log('"CONNECT"')
    requests = [event for event in events(e) if "method" in event]
    images = [r for r in requests if r["path"].startswith("/img/")]
    assert len(images) == 100 and {r["protocol"] for r in images} == {"HTTP/2"} and {r["status"] for r in images} == {200}
    (socket,) = [r for r in requests if r["method"] == "CONNECT"]
    assert socket["protocol"] == "HTTP/2" and socket["status"] == 200 and socket["path"] == "/ws/chat"
    assert socket["backend"] == "chat"
