"""The local CA's files: ca.pem readable by the user who imports it, the key by nobody else."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from edge.tls.local_ca import LocalIssuer


def test_ca_pem_is_readable_by_another_user_and_the_key_is_not():
    base = Path(tempfile.mkdtemp(prefix="edge-ca-", dir="/tmp"))  # not under pytest's 0700 tmp_path
    os.chmod(base, 0o755)
    old = os.umask(0o077)  # a service's strict umask
    try:
        state = base / "state"
        LocalIssuer(str(state))
        mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (state, state / "local-ca",
                                                                 state / "local-ca" / "ca.pem",
                                                                 state / "local-ca" / "ca.key")}
        assert mode == {"state": 0o711, "local-ca": 0o755, "ca.pem": 0o644, "ca.key": 0o600}
        if os.geteuid() == 0:  # as the unprivileged user importing it (CI runs as root)
            as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat"]
            read = subprocess.run(as_nobody + [str(state / "local-ca" / "ca.pem")], capture_output=True, timeout=10)
            assert read.returncode == 0 and read.stdout.startswith(b"-----BEGIN CERTIFICATE-----"), read.stderr
            key = subprocess.run(as_nobody + [str(state / "local-ca" / "ca.key")], capture_output=True, timeout=10)
            assert key.returncode != 0 and b"Permission denied" in key.stderr
    finally:
        os.umask(old)
        shutil.rmtree(base)
