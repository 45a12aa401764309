"""Test certificates from trustme: one CA, leaf certificates written as PEM."""

from __future__ import annotations

from pathlib import Path

import trustme


class TestCA:
    __test__ = False

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_pem = self.dir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem))

    def issue(self, *names: str) -> tuple[Path, Path, Path]:
        """Write cert, key and a combined cert+key PEM for ``names``."""
        leaf = self.ca.issue_cert(*names)
        stem = names[0].replace("*", "_wild")
        cert, key, both = (self.dir / f"{stem}.{ext}" for ext in ("crt", "key", "pem"))
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        key.write_bytes(leaf.private_key_pem.bytes())
        both.write_bytes(cert.read_bytes() + key.read_bytes())
        return cert, key, both
