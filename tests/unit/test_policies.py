"""Admin-only defaults, and the decision cache following policy-file edits."""

import os
import time

from oslo_config import cfg

from midonet_membership.api import policies

ADMIN = {"roles": ["admin"], "project_id": "p", "user_id": "u"}
READER = {"roles": ["reader"], "project_id": "p", "user_id": "u"}


def _authorizer(tmp_path, ttl: float) -> tuple[policies.Authorizer, str]:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("{}\n")
    conf = cfg.ConfigOpts()
    conf([], default_config_files=[])
    policies.get_enforcer(conf)  # registers [oslo_policy]
    conf.set_override("policy_file", str(policy_file), group="oslo_policy")
    return policies.Authorizer(policies.get_enforcer(conf), ttl=ttl), str(policy_file)


def test_every_rule_is_admin_only(tmp_path):
    authorizer, _ = _authorizer(tmp_path, ttl=60)
    for rule in ("create_agent_membership", "get_agent_membership",
                 "delete_agent_membership", "get_agent", "update_agent"):
        assert authorizer.allowed(rule, ADMIN)
        assert not authorizer.allowed(rule, READER)


def test_a_policy_file_edit_applies_after_the_cache_lifetime(tmp_path):
    authorizer, path = _authorizer(tmp_path, ttl=0.2)
    assert not authorizer.allowed("get_agent_membership", READER)
    with open(path, "w") as f:
        f.write('"get_agent_membership": "role:reader"\n')
    later = time.time() + 5
    os.utime(path, (later, later))  # a new mtime even within the same second
    time.sleep(0.25)
    assert authorizer.allowed("get_agent_membership", READER)
