"""Policy defaults: everything is admin-only, overridable by a policy file.

Declared once here; ``oslopolicy-sample-generator`` writes etc/policy.yaml.sample from it.
"""

from __future__ import annotations

import time

from oslo_config import cfg
from oslo_policy import policy

ADMIN_ONLY = "rule:admin_only"

RULES = [
    policy.RuleDefault("context_is_admin", "role:admin",
                       description="Rule for cloud admin access."),
    policy.RuleDefault("admin_only", "rule:context_is_admin",
                       description="Rule for admin-only resources."),
    policy.DocumentedRuleDefault(
        "create_agent_membership", ADMIN_ONLY,
        "Activate an agent: add its host to the DEFAULT tunnel zone.",
        [{"method": "POST", "path": "/agent-memberships"}]),
    policy.DocumentedRuleDefault(
        "get_agent_membership", ADMIN_ONLY, "List or show agent memberships.",
        [{"method": "GET", "path": "/agent-memberships"},
         {"method": "GET", "path": "/agent-memberships/{id}"}]),
    policy.DocumentedRuleDefault(
        "delete_agent_membership", ADMIN_ONLY,
        "Deactivate an agent: remove its host from the DEFAULT tunnel zone.",
        [{"method": "DELETE", "path": "/agent-memberships/{id}"}]),
    policy.DocumentedRuleDefault(
        "get_agent", ADMIN_ONLY, "List or show MidoNet agents.",
        [{"method": "GET", "path": "/agents"}, {"method": "GET", "path": "/agents/{id}"}]),
    policy.DocumentedRuleDefault(
        "get_deployment_status", ADMIN_ONLY,
        "Read the tunnel zone, the importer's lag and failures and the last journal tasks "
        "(the console's zone and journal panel).",
        [{"method": "GET", "path": "/deployment-status"}]),
    policy.DocumentedRuleDefault(
        "update_agent", ADMIN_ONLY, "Update an agent's description.",
        [{"method": "PUT", "path": "/agents/{id}"}]),
]


def list_rules() -> list[policy.RuleDefault]:
    return RULES


def get_enforcer(conf: cfg.ConfigOpts = cfg.CONF) -> policy.Enforcer:
    """An enforcer with our defaults; ``[oslo_policy] policy_file`` overrides them."""
    enforcer = policy.Enforcer(conf)
    enforcer.register_defaults(RULES)
    return enforcer


class Authorizer:
    """Policy decisions, remembered for ``ttl`` seconds per rule and credentials.

    oslo.policy re-stats the policy file and re-inspects every check on each call, a third
    of a simple request's time. Decisions depend only on the rule and the caller's
    credentials (our targets are empty), so they can be reused; a changed policy file takes
    effect within ``ttl``.
    """

    def __init__(self, enforcer: policy.Enforcer, ttl: float = 1.0) -> None:
        self.enforcer = enforcer
        self.ttl = ttl
        self._decisions: dict[tuple, bool] = {}
        self._expires = 0.0

    def allowed(self, rule: str, credentials: dict) -> bool:
        now = time.monotonic()
        if now >= self._expires:
            self._decisions = {}
            self._expires = now + self.ttl
        key = (rule, tuple(sorted(credentials["roles"])), credentials["project_id"],
               credentials["user_id"])
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decisions[key] = bool(
                self.enforcer.enforce(rule, {}, credentials))
        return decision
