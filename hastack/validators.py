"""Checks of single config values, as pure functions.

Each ``*_problem`` function returns ``None`` when the value is fine, or a
short text saying what is wrong and what would be valid. The text names
neither the key nor the value: the caller prefixes ``hastack:<key> = <value>:``
(and shortens values that may be long, such as SSH keys).

``lifecycle_problems`` checks three related keys together and so returns
complete problems, each starting with its key and value
(``hastack:backup.coldAfterDays = 0: ...``), ready to be listed as they are.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import struct

import idna
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

NAMESPACE = "hastack"

# ---------------------------------------------------------------- SSH public keys

SK_ED25519 = "sk-ssh-ed25519@openssh.com"
SK_ECDSA = "sk-ecdsa-sha2-nistp256@openssh.com"

# Key types accepted, with what the blob must hold.
SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    SK_ED25519,
    SK_ECDSA,
)
MIN_RSA_BITS = 2048
_VALID_SSH = ("ssh-ed25519, ssh-rsa (2048 bits or more), ecdsa-sha2-nistp256/384/521, "
              f"{SK_ED25519}, {SK_ECDSA}")
_EXAMPLE_SSH = "e.g. 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... alice@laptop' (the one line of ~/.ssh/id_ed25519.pub)"


class _Truncated(ValueError):
    pass


def _read_string(blob: bytes, pos: int) -> tuple[bytes, int]:
    """One SSH wire-format string (uint32 length, bytes) at ``pos``; the string and the next position."""
    if pos + 4 > len(blob):
        raise _Truncated("ends inside a length field")
    (n,) = struct.unpack(">I", blob[pos:pos + 4])
    if pos + 4 + n > len(blob):
        raise _Truncated(f"a field claims {n} bytes but only {len(blob) - pos - 4} are left")
    return blob[pos + 4:pos + 4 + n], pos + 4 + n


def _sk_problem(key_type: str, blob: bytes) -> str | None:
    """Parse a FIDO (sk-) public key blob: cryptography does not parse all of these.

    sk-ssh-ed25519@openssh.com:         string type, string pubkey (32 bytes), string application
    sk-ecdsa-sha2-nistp256@openssh.com: string type, string curve, string point, string application
    Nothing may be left over.
    """
    try:
        _, pos = _read_string(blob, 0)  # the type, already compared with the line's
        if key_type == SK_ED25519:
            pub, pos = _read_string(blob, pos)
            if len(pub) != 32:
                return f"key body is corrupt: an ed25519 public key has 32 bytes, this one {len(pub)} (mangled or truncated?)"
            ed25519.Ed25519PublicKey.from_public_bytes(pub)
        else:
            curve, pos = _read_string(blob, pos)
            if curve != b"nistp256":
                return f"key body is corrupt: curve {curve[:20]!r} where {SK_ECDSA} has nistp256 (mangled paste?)"
            point, pos = _read_string(blob, pos)
            try:
                ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            except ValueError:
                return "key body is corrupt: its point is not on the curve (mangled paste?)"
        application, pos = _read_string(blob, pos)
        if not application:
            return "key body is corrupt: the FIDO application (usually 'ssh:') is empty"
    except _Truncated as e:
        return f"key body is truncated ({e}); paste the whole line of the .pub file"
    if pos != len(blob):
        return f"key body has {len(blob) - pos} bytes left over after the key (two keys run together, or mangled?)"
    return None


def ssh_public_key_problem(key: str) -> str | None:
    """An OpenSSH public key line: ``<type> <base64> [comment]``, parsed, not only its type read.

    Refused: private keys, unknown types (ssh-dss included), blobs that are not
    base64, truncated or that name another type than the line, points not on
    their curve, RSA under 2048 bits. A changed character inside an ed25519 or
    RSA key body cannot be noticed (the format has no checksum): that key parses
    and simply is another key.
    """
    if not isinstance(key, str) or not key.strip():
        return f"empty; give an OpenSSH public key, {_EXAMPLE_SSH}"
    if "PRIVATE KEY" in key:
        return ("this is a private key: give the public key (the .pub file) instead, "
                "and treat this private key as leaked")
    parts = key.split()
    if parts[0] not in SSH_KEY_TYPES:
        if len(parts) >= 2 and parts[1] in SSH_KEY_TYPES:
            return (f"starts with {parts[0][:20]!r} before the key type (authorized_keys options?); "
                    f"give only '<type> <base64> [comment]', {_EXAMPLE_SSH}")
        return f"key type {parts[0][:40]!r} not accepted; valid: {_VALID_SSH}"
    key_type = parts[0]
    if len(parts) < 2:
        return f"has no key body after {key_type!r}; {_EXAMPLE_SSH}"
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return "key body is not valid base64 (truncated or mangled in copying?); paste the whole line of the .pub file"
    try:
        blob_type, _ = _read_string(blob, 0)
    except _Truncated:
        return "key body is truncated; paste the whole line of the .pub file"
    if blob_type != key_type.encode():
        shown = blob_type.decode("ascii", errors="replace")[:40]
        return f"key body is a {shown!r} key but the line says {key_type!r} (mangled or mixed-up paste?)"

    if key_type.startswith("sk-"):
        return _sk_problem(key_type, blob)

    try:
        public = load_ssh_public_key(f"{key_type} {parts[1]}".encode())
    except (ValueError, TypeError) as e:
        # cryptography's texts ("Invalid data", "Corrupt data: unparsed data") never hold key material
        return f"key body is truncated or corrupt ({e}); paste the whole line of the .pub file"
    except Exception as e:  # noqa: BLE001 - an unsupported algorithm must read as a refusal, not a traceback
        return f"key cannot be read ({type(e).__name__}); valid: {_VALID_SSH}"
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        return (f"RSA key of {public.key_size} bits is too weak; use {MIN_RSA_BITS} bits or more "
                "(ssh-keygen -t rsa -b 4096), or better ssh-ed25519")
    return None


# ---------------------------------------------------------------- domain names

_EXAMPLE_DOMAIN = "e.g. www.example.com"


def _alabel(label: str) -> str:
    """The ASCII (A-label) form of one label, for its length: punycode of non-ASCII labels."""
    if label.isascii():
        return label
    return "xn--" + label.encode("punycode").decode("ascii")


def domain_problem(value: str) -> str | None:
    """A bare host name served by the load balancers (certificates are issued for it).

    Valid under IDNA 2008 (so ``bücher.example`` is fine), at least two labels,
    each 1 to 63 characters in its ASCII form, 253 in all; no scheme, path,
    port, wildcard, trailing dot, spaces, IP address or upper case.
    """
    if not isinstance(value, str) or not value:
        return f"empty; give a host name, {_EXAMPLE_DOMAIN}"
    if "://" in value:
        return f"contains a URL scheme ({value.split('://')[0]}://); give the bare host name, {_EXAMPLE_DOMAIN}"
    if any(c.isspace() for c in value):
        return f"contains spaces; give the bare host name, {_EXAMPLE_DOMAIN}"
    if "/" in value:
        return f"contains a path; give the bare host name without '/...', {_EXAMPLE_DOMAIN}"
    if "@" in value:
        return f"contains '@'; give the bare host name, {_EXAMPLE_DOMAIN}"
    try:
        ipaddress.ip_address(value.strip("[]"))
        return f"is an IP address; give a host name, {_EXAMPLE_DOMAIN}"
    except ValueError:
        pass
    if ":" in value:
        return f"contains a port; give the bare host name without ':<port>' (HAProxy serves 80 and 443), {_EXAMPLE_DOMAIN}"
    if "*" in value:
        return f"wildcards are not accepted; give the one host name the stack serves, {_EXAMPLE_DOMAIN}"
    if value.endswith("."):
        return f"ends with '.'; give it without the trailing dot, {_EXAMPLE_DOMAIN}"
    if value != value.lower():
        return f"has upper-case letters; write it in lower case ({value.lower()})"
    labels = value.split(".")
    if len(labels) < 2:
        return f"a single label; give a fully qualified name of at least two labels, {_EXAMPLE_DOMAIN}"
    if any(not label for label in labels):
        return f"has an empty label ('..' or a leading '.'), {_EXAMPLE_DOMAIN}"
    try:
        ascii_labels = [_alabel(label) for label in labels]
    except UnicodeError:
        return f"not a valid host name (a label cannot be encoded), {_EXAMPLE_DOMAIN}"
    for label, ascii_label in zip(labels, ascii_labels, strict=True):
        if len(ascii_label) > 63:
            return f"label {label[:20]!r}... is {len(ascii_label)} characters long (ASCII form); each label is at most 63"
    total = len(".".join(ascii_labels))
    if total > 253:
        return f"is {total} characters long (ASCII form); a host name is at most 253"
    if labels[-1].isdigit():
        return f"the last label is all digits; top-level domains are not numeric, {_EXAMPLE_DOMAIN}"
    try:
        idna.encode(value, uts46=False)
    except idna.IDNAError as e:
        return f"not a valid host name under IDNA 2008 ({e}); letters, digits and '-' per label, {_EXAMPLE_DOMAIN}"
    return None


# ---------------------------------------------------------------- names rendered into config files

CONFIG_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,48}$")


def config_name_problem(value: str, what: str) -> str | None:
    """A name rendered into configuration files (Cassandra cluster name into cassandra.yaml,
    datacenter into cassandra-rackdc.properties): letters, digits, '_' and '-', 1 to 48.

    ``what`` names it in the text, e.g. "Cassandra cluster name".
    """
    if not isinstance(value, str) or not value:
        return f"{what} is empty; letters, digits, '_' and '-' only, 1 to 48 characters, e.g. dc1"
    if len(value) > 48:
        return f"{what} is {len(value)} characters long; at most 48 (letters, digits, '_' and '-')"
    if not CONFIG_NAME_RE.match(value):
        bad = sorted({c for c in value if not re.match(r"[A-Za-z0-9_-]", c)})
        shown = ", ".join(repr(c) for c in bad)
        return (f"{what} contains {shown}; letters, digits, '_' and '-' only, 1 to 48 characters "
                "(it is written into cassandra.yaml and cassandra-rackdc.properties)")
    return None


# ---------------------------------------------------------------- server image

SUPPORTED_IMAGES = ("debian-12",)


def image_problem(value: str) -> str | None:
    """The server image: only Debian 12 (``debian-12``), the one the roles are written and tested for.

    Hetzner offers others (debian-13, ubuntu-24.04, ...); they boot, but the
    roles (package names, paths, service units) are written for Debian 12.
    """
    if value in SUPPORTED_IMAGES:
        return None
    return f"the roles are written and tested for Debian 12 only; valid: {', '.join(SUPPORTED_IMAGES)}"


# ---------------------------------------------------------------- backup lifecycle
#
# hastack/cloud/aws_backup.py declares one lifecycle rule on the backup prefix:
#   Transition                    days=coldAfterDays            -> GLACIER_IR   (current versions)
#   NoncurrentVersionTransition   noncurrent_days=coldAfterDays -> GLACIER_IR
#   NoncurrentVersionExpiration   noncurrent_days=noncurrentExpireDays
# and an object lock default retention of retentionDays (COMPLIANCE).
#
# What S3 refuses in such a rule (PutBucketLifecycleConfiguration, InvalidArgument):
# - Transition Days: 0 or more for INTELLIGENT_TIERING, GLACIER_IR, GLACIER,
#   DEEP_ARCHIVE; at least 30 for STANDARD_IA and ONEZONE_IA (S3 API reference,
#   "Transition"; User Guide, "Transitioning objects using Amazon S3 Lifecycle",
#   Constraints). The same 30-day minimum holds for noncurrent versions
#   transitioned to STANDARD_IA / ONEZONE_IA (same User Guide section).
# - NoncurrentVersionExpiration NoncurrentDays: a positive integer (S3 API
#   reference, "NoncurrentVersionExpiration").
# - "'NoncurrentDays' in the NoncurrentVersionExpiration action must be greater
#   than 'NoncurrentDays' in the NoncurrentVersionTransition action" (the error
#   S3 returns; quoted in the AWS SDK for .NET lifecycle integration tests).
# The current-version part has a transition but no expiration, so no ordering
# rule applies to it. GLACIER_IR's 90-day minimum storage duration is a charge
# (prorated early deletion fee), not a refusal, so it is not checked here.
#
# Our own rules on top: every value at least 1 (a 0-day transition would be
# accepted by S3 for GLACIER_IR but moves each backup to cold storage before it
# is verified), retentionDays at most 3650, and noncurrentExpireDays above
# retentionDays (locked versions cannot expire earlier).

TRANSITION_MIN_DAYS = {
    "STANDARD_IA": 30,
    "ONEZONE_IA": 30,
    "INTELLIGENT_TIERING": 0,
    "GLACIER_IR": 0,
    "GLACIER": 0,
    "DEEP_ARCHIVE": 0,
}
COLD_STORAGE_CLASS = "GLACIER_IR"  # must match hastack.cloud.aws_backup.COLD_STORAGE_CLASS (a test checks)
MAX_RETENTION_DAYS = 3650


def _whole_days(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def lifecycle_problems(retention_days: int, noncurrent_expire_days: int, cold_after_days: int,
                       storage_class: str = COLD_STORAGE_CLASS) -> list[str]:
    """Every reason S3 (or the object lock) would refuse the backup bucket's lifecycle.

    Problems are complete: each starts with ``hastack:backup.<key> = <value>:``.
    ``storage_class`` is the class backups go cold to (aws_backup.COLD_STORAGE_CLASS).
    """
    if storage_class not in TRANSITION_MIN_DAYS:
        raise ValueError(f"unknown S3 storage class {storage_class!r}; known: {', '.join(TRANSITION_MIN_DAYS)}")
    ns = f"{NAMESPACE}:backup"
    p: list[str] = []
    values = {
        "retentionDays": retention_days,
        "noncurrentExpireDays": noncurrent_expire_days,
        "coldAfterDays": cold_after_days,
    }
    ok = {}
    for key, value in values.items():
        if not _whole_days(value):
            p.append(f"{ns}.{key} = {value!r}: must be a whole number of days")
        elif value < 1:
            p.append(f"{ns}.{key} = {value}: must be at least 1 (days)")
        else:
            ok[key] = value

    if "retentionDays" in ok and ok["retentionDays"] > MAX_RETENTION_DAYS:
        p.append(f"{ns}.retentionDays = {retention_days}: must be 1 to {MAX_RETENTION_DAYS}")
        del ok["retentionDays"]

    minimum = TRANSITION_MIN_DAYS[storage_class]
    if "coldAfterDays" in ok and cold_after_days < minimum:
        p.append(f"{ns}.coldAfterDays = {cold_after_days}: S3 refuses a transition to {storage_class} "
                 f"before {minimum} days (current and noncurrent versions); give at least {minimum}")

    if "noncurrentExpireDays" in ok and "retentionDays" in ok and noncurrent_expire_days <= retention_days:
        p.append(f"{ns}.noncurrentExpireDays = {noncurrent_expire_days}: must exceed "
                 f"{ns}.retentionDays ({retention_days}); locked versions cannot expire earlier")

    if "noncurrentExpireDays" in ok and "coldAfterDays" in ok and noncurrent_expire_days <= cold_after_days:
        p.append(f"{ns}.noncurrentExpireDays = {noncurrent_expire_days}: must be greater than "
                 f"{ns}.coldAfterDays ({cold_after_days}); S3 refuses a rule whose noncurrent versions expire "
                 f"no later than they move to {storage_class}")
    return p
