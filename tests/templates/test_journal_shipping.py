"""The audit trail's files: every host but the monitoring host ships its journal to the monitoring host's
private address, over TLS checked against the stack CA; the sink listens there only, its firewall admits
the stack's private addresses only, and its retention unit passes systemd-analyze verify."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from hastack.templating import render
from roles import journal_shipping as j
from roles.base import config as base_config
from roles.base.config import stack_ca_file
from tests.templates.hostdata import host_data, topology
from tests.templates.test_base_templates import input_rules, saddrs

STACKS = ("prod", "staging")


@pytest.mark.parametrize("stack", STACKS)
def test_every_host_but_the_sink_ships_to_the_monitoring_hosts_private_address(stack):
    topo = topology(stack)
    sink = topo.hosts_with_role("monitoring")[0]
    for h in topo.hosts:
        data = host_data(stack, h, "base")
        if h.name == sink.name:
            assert data["journal_sink"] is None  # its own journal stays on it
            continue
        conf = render("base", j.UPLOAD_CONF, **j.upload_vars(data)[j.UPLOAD_CONF])
        assert f"URL=https://{sink.private_ip}:{j.PORT}\n" in conf
        assert f"TrustedCertificateFile={stack_ca_file(stack)}\n" in conf
        unit = render("base", j.UPLOAD_UNIT, **j.upload_vars(data)[j.UPLOAD_UNIT])
        # the key stays root-only on disk: the uploader's dynamic user gets it as a credential
        assert f"LoadCredential=client.key:{j.UPLOAD_TLS_DIR}/client.key" in unit
        assert "Restart=always" in unit and "StartLimitIntervalSec=0" in unit


@pytest.mark.parametrize("stack", STACKS)
def test_the_sink_listens_on_its_private_address_and_admits_the_private_network_only(stack):
    topo = topology(stack)
    sink = topo.hosts_with_role("monitoring")[0]
    data = host_data(stack, sink, "monitoring")
    socket = render("monitoring", j.SINK_SOCKET, **j.sink_vars(data)[j.SINK_SOCKET])
    assert [line for line in socket.splitlines() if line.startswith("ListenStream")] == \
        ["ListenStream=", f"ListenStream={sink.private_ip}:{j.PORT}"]  # the package's own (every address) reset
    base = host_data(stack, sink, "base")
    ruleset = render("base", base_config.NFTABLES, **base_config.template_vars(sink.name, base)[base_config.NFTABLES])
    rules = [r for r in input_rules(ruleset) if re.search(rf"dport {j.PORT}\b", r)]
    assert len(rules) == 1, rules
    assert saddrs(rules[0]) == {str(topo.subnet)}, rules[0]  # the stack's private subnet, nothing else
    for h in topo.hosts:
        if h.name != sink.name:
            other = render("base", base_config.NFTABLES,
                           **base_config.template_vars(h.name, host_data(stack, h, "base"))[base_config.NFTABLES])
            assert not [r for r in input_rules(other) if re.search(rf"dport {j.PORT}\b", r)], h.name


def test_the_sinks_files_and_retention_pass_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed (package systemd)")
    data = host_data("prod", topology("prod").hosts_with_role("monitoring")[0], "monitoring",
                     monitoring_journal_retention_days=30)
    tvars = j.sink_vars(data)
    conf = render("monitoring", j.SINK_CONF, **tvars[j.SINK_CONF])
    assert "SplitMode=host" in conf and "TrustedCertificateFile=" not in conf.split("# no TrustedCertificateFile")[0]
    assert "LogsDirectoryMode=0700" in render("monitoring", j.SINK_UNIT, **tvars[j.SINK_UNIT])
    service = tmp_path / "hastack-journal-retention.service"
    service.write_text(render("monitoring", j.RETENTION_SERVICE, **tvars[j.RETENTION_SERVICE]))
    timer = tmp_path / "hastack-journal-retention.timer"
    timer.write_text(render("monitoring", j.RETENTION_TIMER, **tvars[j.RETENTION_TIMER]))
    proc = subprocess.run(["systemd-analyze", "verify", str(service), str(timer)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"--directory={j.REMOTE_DIR} --vacuum-time=30d" in service.read_text()
