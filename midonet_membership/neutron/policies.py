"""agent-membership's policy defaults inside Neutron (the ``neutron.policies`` entry point).

The same documented defaults as our server (``api.policies``): admin only. Neutron already
defines ``context_is_admin`` and ``admin_only``; registering them twice is an error, so only
the membership rules are handed over.
"""

from __future__ import annotations

from oslo_policy import policy

from midonet_membership.api import policies


def list_rules() -> list[policy.RuleDefault]:
    return [rule for rule in policies.RULES if rule.name.endswith("_agent_membership")]
