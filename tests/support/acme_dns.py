"""A stand-in for joohoi/acme-dns, which Debian does not package: its documented ``POST /update`` API only.

``python acme_dns.py PORT CREDENTIALS_JSON BIND_HOST:PORT TSIG_SECRET_FILE``: accounts come from the
credentials file (as acme-dns clients keep it); an update with the right ``X-Api-User``/``X-Api-Key``
and a 43-character ``txt`` replaces the subdomain's TXT set in BIND with its two newest values (as
acme-dns keeps them), by an RFC 2136 update signed with the test zone's TSIG key.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dns.query
import dns.rdata
import dns.tsigkeyring
import dns.update

port, credentials_file, server, secret_file = sys.argv[1:5]
host, dns_port = server.rsplit(":", 1)
accounts = {a["username"]: a for a in json.load(open(credentials_file)).values()}
keyring = dns.tsigkeyring.from_text({"edge-key": open(secret_file).read().strip()})
latest: dict[str, list[str]] = {}

class Update(BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path != "/update":
            return self.answer(404, {"error": "not found"})
        account = accounts.get(self.headers.get("X-Api-User", ""))
        if account is None or account["password"] != self.headers.get("X-Api-Key"):
            return self.answer(401, {"error": "forbidden"})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        except ValueError:
            return self.answer(400, {"error": "malformed_json_payload"})
        if body.get("subdomain") != account["subdomain"]:
            return self.answer(401, {"error": "forbidden"})
        if not isinstance(body.get("txt"), str) or len(body["txt"]) != 43:
            return self.answer(400, {"error": "bad_txt"})
        values = latest[account["subdomain"]] = (latest.get(account["subdomain"], []) + [body["txt"]])[-2:]
        update = dns.update.UpdateMessage("x.test", keyring=keyring, keyname="edge-key", keyalgorithm="hmac-sha256")
        update.replace(account["fulldomain"] + ".", 1, *[dns.rdata.from_text("IN", "TXT", f'"{v}"') for v in values])
        response = dns.query.tcp(update, host, port=int(dns_port), timeout=5)
        if response.rcode() != 0:
            return self.answer(500, {"error": "db_error"})
        self.answer(200, {"txt": body["txt"]})

    def answer(self, code, document):
        data = json.dumps(document).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

ThreadingHTTPServer(("127.0.0.1", int(port)), Update).serve_forever()
