"""A stack CA for tests that stand for a real stack (the secret hastack:ca, the ``secrets.ca`` output):
made once per test run in a directory of its own, trusted nowhere."""

import tempfile
from pathlib import Path

from hastack.pki import CertificateAuthority

CA = CertificateAuthority.own(Path(tempfile.mkdtemp(prefix="hastack-test-ca-")), "test")
CERT = CA.ca_pem
KEY = CA.key_path.read_text()
BUNDLE = CERT + KEY              # hastack:ca as `hastack ca store` keeps it: the certificate, then the key
OUTPUT = {"cert": CERT, "key": KEY}  # the program's secrets.ca
