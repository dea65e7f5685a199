"""The checked-in samples under etc/ are what the generators make from the code today."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NAMESPACES = ["--namespace", "midonet_membership", "--namespace", "oslo.policy",
              "--namespace", "keystonemiddleware.auth_token"]


@pytest.mark.parametrize("command, sample", [
    (["oslo-config-generator", *NAMESPACES], "etc/midonet-membership.conf.sample"),
    (["oslopolicy-sample-generator", "--namespace", "midonet_membership"],
     "etc/policy.yaml.sample"),
])
def test_sample_is_current(tmp_path, command, sample):
    out = tmp_path / "sample"
    subprocess.run([str(BIN / command[0]), *command[1:], "--output-file", str(out)],
                   check=True, capture_output=True)
    assert out.read_text() == (ROOT / sample).read_text(), (
        f"{sample} is stale: run `make sample-config` and commit it")


def test_sample_documents_the_spec_option():
    text = (ROOT / "etc/midonet-membership.conf.sample").read_text()
    assert "#tunnel_protocol = vxlan" in text
