"""Sandbox network policies, host patterns, placeholders and redaction: pure logic shared by the
gateway, the secrets-broker and the egress-proxy."""

from hutch.egress_policy.errors import PolicyError
from hutch.egress_policy.hosts import HostPattern, normalize_name, parse_host_pattern
from hutch.egress_policy.placeholders import (
    HeaderTemplate,
    check_secret_name,
    find_placeholders,
    parse_header_template,
    placeholder,
    replace_placeholders,
)
from hutch.egress_policy.platform import PLATFORM_DENY, platform_refuses
from hutch.egress_policy.policy import Decision, Policy, parse_policy
from hutch.egress_policy.redaction import StreamRedactor, redact

__all__ = [
    "PLATFORM_DENY",
    "Decision",
    "HeaderTemplate",
    "HostPattern",
    "Policy",
    "PolicyError",
    "StreamRedactor",
    "check_secret_name",
    "find_placeholders",
    "normalize_name",
    "parse_header_template",
    "parse_host_pattern",
    "parse_policy",
    "placeholder",
    "platform_refuses",
    "redact",
    "replace_placeholders",
]
