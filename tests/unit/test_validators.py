"""Checks of single config values: each refusal says what is wrong and what would be valid."""

import base64
import shutil
import struct
import subprocess

import pytest

from hastack import validators
from hastack.stackfile import hastack_config, read_stack_file
from hastack.validators import (
    config_name_problem,
    domain_problem,
    image_problem,
    lifecycle_problems,
    ssh_public_key_problem,
)

# ------------------------------------------------------------------ SSH public keys


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Public key lines made by ssh-keygen: name -> 'type base64 comment'."""
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen not installed")
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name, args in {
        "ed25519": ["-t", "ed25519"],
        "rsa2048": ["-t", "rsa", "-b", "2048"],
        "rsa4096": ["-t", "rsa", "-b", "4096"],
        "rsa1024": ["-t", "rsa", "-b", "1024"],
        "ecdsa256": ["-t", "ecdsa", "-b", "256"],
        "ecdsa384": ["-t", "ecdsa", "-b", "384"],
        "ecdsa521": ["-t", "ecdsa", "-b", "521"],
    }.items():
        subprocess.run(["ssh-keygen", "-q", "-N", "", "-C", f"alice@{name}", "-f", str(d / name), *args], check=True)
        out[name] = (d / f"{name}.pub").read_text().strip()
        out[name + "-private"] = (d / name).read_text()
    return out


def wire(*fields: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(f)) + f for f in fields)


def blob_of(line: str) -> bytes:
    return base64.b64decode(line.split()[1])


def fields_of(blob: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(blob):
        (n,) = struct.unpack(">I", blob[pos:pos + 4])
        out.append(blob[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out


def line(key_type: str, blob: bytes, comment: str = "bob@yubikey") -> str:
    return f"{key_type} {base64.b64encode(blob).decode()} {comment}"


@pytest.mark.parametrize("name", ["ed25519", "rsa2048", "rsa4096", "ecdsa256", "ecdsa384", "ecdsa521"])
def test_generated_keys_are_accepted(keys, name):
    assert ssh_public_key_problem(keys[name]) is None
    key_type, body, _ = keys[name].split()
    assert ssh_public_key_problem(f"{key_type} {body}") is None  # no comment
    assert ssh_public_key_problem(f"{key_type} {body} Alice Example (laptop)") is None  # comment with spaces


def test_the_repository_stacks_keys_are_accepted():
    for stack in ("prod", "staging", "dr", "example"):
        for admin in hastack_config(read_stack_file(stack)[0])["admins"]:
            assert ssh_public_key_problem(admin["sshKey"]) is None, (stack, admin["name"])


def test_rsa_under_2048_bits_is_refused(keys):
    problem = ssh_public_key_problem(keys["rsa1024"])
    assert problem.startswith("RSA key of 1024 bits is too weak; use 2048 bits or more")


@pytest.mark.parametrize("cut", [1, 3, 4, 8, 40])
def test_truncated_key_is_refused(keys, cut):
    key_type, body, comment = keys["ed25519"].split()
    problem = ssh_public_key_problem(f"{key_type} {body[:-cut]} {comment}")
    assert problem is not None
    assert "truncated" in problem


def test_truncated_rsa_key_cut_on_a_base64_boundary_is_refused(keys):
    key_type, body, _ = keys["rsa2048"].split()
    assert ssh_public_key_problem(f"{key_type} {body[:-12]}").startswith("key body is truncated or corrupt")


def test_key_broken_over_two_lines_is_refused(keys):
    key_type, body, comment = keys["ed25519"].split()
    problem = ssh_public_key_problem(f"{key_type} {body[:40]}\n{body[40:]} {comment}")
    assert "truncated" in problem


def test_changed_character_in_the_type_header_is_refused(keys):
    key_type, body, _ = keys["ed25519"].split()
    mangled = body[:10] + ("B" if body[10] != "B" else "C") + body[11:]
    problem = ssh_public_key_problem(f"{key_type} {mangled}")
    assert problem.startswith("key body is a ")
    assert "but the line says 'ssh-ed25519' (mangled or mixed-up paste?)" in problem


def test_changed_character_in_an_ecdsa_point_is_refused(keys):
    key_type, body, _ = keys["ecdsa256"].split()
    mangled = body[:60] + ("A" if body[60] != "A" else "B") + body[61:]
    assert ssh_public_key_problem(f"{key_type} {mangled}").startswith("key body is truncated or corrupt")


def test_type_name_not_matching_the_blob_is_refused(keys):
    _, body, _ = keys["ed25519"].split()
    assert ssh_public_key_problem(f"ssh-rsa {body}") == (
        "key body is a 'ssh-ed25519' key but the line says 'ssh-rsa' (mangled or mixed-up paste?)")


def test_extra_data_after_the_key_is_refused(keys):
    key_type, body, _ = keys["ed25519"].split()
    extended = base64.b64encode(base64.b64decode(body) + b"\0\0\0\0").decode()
    assert ssh_public_key_problem(f"{key_type} {extended}").startswith("key body is truncated or corrupt")


def test_not_base64_is_refused(keys):
    key_type, body, _ = keys["ed25519"].split()
    assert ssh_public_key_problem(f"{key_type} {body[:20]}!{body[21:]}").startswith("key body is not valid base64")


@pytest.mark.parametrize("key_type", ["ssh-dss", "ecdsa-sha2-nistp192", "ssh-ed448", "x509v3-sign-rsa"])
def test_unknown_types_are_refused_with_the_valid_list(keys, key_type):
    _, body, _ = keys["ed25519"].split()
    problem = ssh_public_key_problem(f"{key_type} {body}")
    assert problem.startswith(f"key type '{key_type}' not accepted; valid: ssh-ed25519, ssh-rsa (2048 bits or more)")


def test_private_key_is_refused_without_echoing_it(keys):
    private = keys["ed25519-private"]
    problem = ssh_public_key_problem(private)
    assert problem.startswith("this is a private key: give the public key (the .pub file)")
    assert private.splitlines()[1] not in problem


def test_authorized_keys_options_are_refused(keys):
    problem = ssh_public_key_problem('from="10.0.0.0/8" ' + keys["ed25519"])
    assert problem.startswith("starts with 'from=\"10.0.0.0/8\"' before the key type")


@pytest.mark.parametrize("value", ["", "   ", None])
def test_empty_key(value):
    assert ssh_public_key_problem(value).startswith("empty; give an OpenSSH public key")


def test_type_without_body(keys):
    assert ssh_public_key_problem("ssh-ed25519").startswith("has no key body after 'ssh-ed25519'")


# FIDO (sk-) keys: built from real ssh-keygen keys' public parts, in OpenSSH's wire format.

SK_ED = "sk-ssh-ed25519@openssh.com"
SK_EC = "sk-ecdsa-sha2-nistp256@openssh.com"


def sk_ed25519(keys, *, pub=None, application=b"ssh:", extra=b""):
    pub = pub if pub is not None else fields_of(blob_of(keys["ed25519"]))[1]
    return line(SK_ED, wire(SK_ED.encode(), pub, application) + extra)


def sk_ecdsa(keys, *, curve=b"nistp256", point=None, application=b"ssh:"):
    point = point if point is not None else fields_of(blob_of(keys["ecdsa256"]))[2]
    return line(SK_EC, wire(SK_EC.encode(), curve, point, application))


def test_sk_keys_are_accepted(keys):
    assert ssh_public_key_problem(sk_ed25519(keys)) is None
    assert ssh_public_key_problem(sk_ecdsa(keys)) is None
    assert ssh_public_key_problem(sk_ed25519(keys, application=b"ssh:work")) is None


def test_sk_ed25519_with_a_short_public_key_is_refused(keys):
    assert ssh_public_key_problem(sk_ed25519(keys, pub=b"\1" * 31)) == (
        "key body is corrupt: an ed25519 public key has 32 bytes, this one 31 (mangled or truncated?)")


def test_sk_key_without_its_application_is_refused(keys):
    full = sk_ed25519(keys)
    blob = blob_of(full)
    cut = line(SK_ED, blob[:-len(wire(b"ssh:"))])
    assert ssh_public_key_problem(cut).startswith("key body is truncated (ends inside a length field)")


def test_sk_key_with_bytes_left_over_is_refused(keys):
    assert ssh_public_key_problem(sk_ed25519(keys, extra=b"\0\0\0\1x")) == (
        "key body has 5 bytes left over after the key (two keys run together, or mangled?)")


def test_sk_ecdsa_with_another_curve_or_a_bad_point_is_refused(keys):
    assert ssh_public_key_problem(sk_ecdsa(keys, curve=b"nistp384")).startswith(
        "key body is corrupt: curve b'nistp384' where sk-ecdsa-sha2-nistp256@openssh.com has nistp256")
    point = bytearray(fields_of(blob_of(keys["ecdsa256"]))[2])
    point[20] ^= 0x55
    assert ssh_public_key_problem(sk_ecdsa(keys, point=bytes(point))) == (
        "key body is corrupt: its point is not on the curve (mangled paste?)")


def test_sk_truncated_base64_is_refused(keys):
    key_type, body, _ = sk_ecdsa(keys).split()
    assert "truncated" in ssh_public_key_problem(f"{key_type} {body[:-8]}")


# ------------------------------------------------------------------ domain names


@pytest.mark.parametrize("value", [
    "www.example.com", "example.com", "a-b.example.co.uk", "bücher.example", "xn--bcher-kva.example",
    "staging.example.com", "www.hastack.lab", "x1.example", "a" * 63 + ".example",
])
def test_valid_domains(value):
    assert domain_problem(value) is None


@pytest.mark.parametrize("value, start", [
    ("https://www.example.com", "contains a URL scheme (https://); give the bare host name, e.g. www.example.com"),
    ("www.example.com/shop", "contains a path;"),
    ("www.example.com:443", "contains a port;"),
    ("www.example .com", "contains spaces;"),
    ("admin@example.com", "contains '@';"),
    ("www.example.com.", "ends with '.'; give it without the trailing dot"),
    ("*.example.com", "wildcards are not accepted;"),
    ("192.0.2.10", "is an IP address; give a host name"),
    ("2001:db8::1", "is an IP address; give a host name"),
    ("WWW.Example.com", "has upper-case letters; write it in lower case (www.example.com)"),
    ("localhost", "a single label; give a fully qualified name of at least two labels"),
    ("www..example.com", "has an empty label"),
    (".example.com", "has an empty label"),
    ("a" * 64 + ".example", "label 'aaaaaaaaaaaaaaaaaaaa'... is 64 characters long (ASCII form); each label is at most 63"),
    (".".join(["a" * 60] * 5), "is 304 characters long (ASCII form); a host name is at most 253"),
    ("example.123", "the last label is all digits"),
    ("my_app.example.com", "not a valid host name under IDNA 2008"),
    ("-www.example.com", "not a valid host name under IDNA 2008"),
    ("www-.example.com", "not a valid host name under IDNA 2008"),
    ("", "empty; give a host name, e.g. www.example.com"),
])
def test_invalid_domains(value, start):
    assert domain_problem(value).startswith(start)


def test_long_unicode_label_is_measured_in_its_ascii_form():
    label = "".join(chr(0x4E00 + 97 * i) for i in range(25))  # 25 characters; its punycode form has 72
    assert domain_problem(f"{label}.example") == (
        f"label '{label[:20]}'... is 72 characters long (ASCII form); each label is at most 63")
    assert domain_problem(f"{label[:12]}.example") is None  # 33 in ASCII form


# ------------------------------------------------------------------ names in config files


@pytest.mark.parametrize("value", ["hastack", "hastack-prod", "dc_1", "DE", "a" * 48])
def test_valid_config_names(value):
    assert config_name_problem(value, "Cassandra cluster name") is None


@pytest.mark.parametrize("value, shown", [
    ("my cluster", "' '"), ("dc:1", "':'"), ('x"y', "'\"'"), ("a#b", "'#'"), ("a{b}", "'{', '}'"),
    ("a\nb", "'\\n'"), ("dé", "'é'"),
])
def test_config_names_with_characters_that_break_files(value, shown):
    problem = config_name_problem(value, "Cassandra datacenter")
    assert problem.startswith(f"Cassandra datacenter contains {shown}; letters, digits, '_' and '-' only, 1 to 48")
    assert "cassandra-rackdc.properties" in problem


def test_config_name_length():
    assert config_name_problem("a" * 49, "Cassandra cluster name") == (
        "Cassandra cluster name is 49 characters long; at most 48 (letters, digits, '_' and '-')")
    assert config_name_problem("", "Cassandra datacenter").startswith("Cassandra datacenter is empty;")


# ------------------------------------------------------------------ image


def test_debian_12_is_the_image():
    assert image_problem("debian-12") is None


@pytest.mark.parametrize("value", ["debian-13", "ubuntu-22.04", "ubuntu-24.04", "debian-11", "Debian 12", "", None])
def test_other_images_are_refused(value):
    assert image_problem(value) == "the roles are written and tested for Debian 12 only; valid: debian-12"


# ------------------------------------------------------------------ backup lifecycle


def stack_lifecycle(stack):
    backup = hastack_config(read_stack_file(stack)[0]).get("backup", {})
    # the defaults of roles.backup.BackupConfig
    return (backup.get("retentionDays", 30), backup.get("noncurrentExpireDays", 90), backup.get("coldAfterDays", 30))


def test_defaults_pass():
    assert lifecycle_problems(30, 90, 30) == []


@pytest.mark.parametrize("stack", ["prod", "staging", "dr", "example"])
def test_repository_stacks_pass(stack):
    assert lifecycle_problems(*stack_lifecycle(stack)) == []


@pytest.mark.parametrize("args, key, value", [
    ((0, 90, 30), "retentionDays", 0),
    ((30, -1, 30), "noncurrentExpireDays", -1),
    ((30, 90, 0), "coldAfterDays", 0),
])
def test_zero_or_negative_days_are_refused(args, key, value):
    assert f"hastack:backup.{key} = {value}: must be at least 1 (days)" in lifecycle_problems(*args)


def test_not_a_number_of_days():
    assert lifecycle_problems(30, "90", 30) == ["hastack:backup.noncurrentExpireDays = '90': must be a whole number of days"]
    assert lifecycle_problems(True, 90, 30)[0] == "hastack:backup.retentionDays = True: must be a whole number of days"


def test_retention_at_most_ten_years():
    assert lifecycle_problems(3651, 4000, 30) == ["hastack:backup.retentionDays = 3651: must be 1 to 3650"]


def test_noncurrent_expiry_must_exceed_retention():
    assert lifecycle_problems(30, 30, 10) == [
        "hastack:backup.noncurrentExpireDays = 30: must exceed hastack:backup.retentionDays (30); "
        "locked versions cannot expire earlier"]


def test_noncurrent_expiry_must_come_after_the_noncurrent_transition():
    assert lifecycle_problems(7, 30, 30) == [
        "hastack:backup.noncurrentExpireDays = 30: must be greater than hastack:backup.coldAfterDays (30); "
        "S3 refuses a rule whose noncurrent versions expire no later than they move to GLACIER_IR"]


def test_both_ordering_rules_reported_together():
    found = lifecycle_problems(60, 40, 50)
    assert [p.split(":")[1].split(" ")[0] for p in found] == ["backup.noncurrentExpireDays"] * 2
    assert "must exceed hastack:backup.retentionDays (60)" in found[0]
    assert "must be greater than hastack:backup.coldAfterDays (50)" in found[1]


def test_infrequent_access_classes_need_30_days():
    assert lifecycle_problems(7, 90, 20, storage_class="STANDARD_IA") == [
        "hastack:backup.coldAfterDays = 20: S3 refuses a transition to STANDARD_IA before 30 days "
        "(current and noncurrent versions); give at least 30"]
    assert lifecycle_problems(7, 90, 30, storage_class="ONEZONE_IA") == []
    assert lifecycle_problems(7, 90, 1, storage_class="GLACIER_IR") == []


def test_unknown_storage_class_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown S3 storage class 'GLACIER_XYZ'"):
        lifecycle_problems(30, 90, 30, storage_class="GLACIER_XYZ")


def test_cold_storage_class_is_the_programs():
    from hastack.cloud.aws_backup import COLD_STORAGE_CLASS

    assert validators.COLD_STORAGE_CLASS == COLD_STORAGE_CLASS


def test_the_model_reports_the_lifecycle_problems(prod_config):
    """A stack whose lifecycle S3 would refuse is refused by the model with these very lines."""
    from hastack.model import TopologyError, load

    prod_config["backup"] = {"retentionDays": 30, "noncurrentExpireDays": 30, "coldAfterDays": 10}
    with pytest.raises(TopologyError) as exc:
        load("prod", prod_config, secret_keys={"hastack:failoverToken", "hastack:secretSeed"})
    assert lifecycle_problems(30, 30, 10) == [p for p in exc.value.problems if "backup." in p]
