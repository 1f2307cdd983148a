"""Network policies as the gateway takes them: checked by the one shared policy module, stored and
sent on in their normalized form. Pure (protobuf messages in, plain lists out)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from hutch.core import errors
from hutch.egress_policy import PolicyError, parse_policy
from hutch.v1 import network_pb2

NetworkLists = dict[str, list[str]]
KEYS = ("allow", "deny", "passthrough")


def check_network(allow: Sequence[str] = (), deny: Sequence[str] = (), passthrough: Sequence[str] = ()) -> NetworkLists:
    """The policy's normalized lists; raises InvalidArgument naming the first bad entry."""
    try:
        return parse_policy(list(allow), list(deny), list(passthrough)).to_lists()
    except PolicyError as exc:
        raise errors.InvalidArgument(str(exc)) from None


def lists_from(value: Mapping[str, Sequence[str]] | str | None) -> NetworkLists:
    """A stored policy (a JSON object or the decoded dict) as lists under every key."""
    data = json.loads(value) if isinstance(value, str) else dict(value or {})
    return {key: [str(x) for x in data.get(key, [])] for key in KEYS}


def network_lists(message: network_pb2.NetworkPolicy) -> NetworkLists:
    """A NetworkPolicy message's lists, unchecked (check_network does that)."""
    return {"allow": list(message.allow), "deny": list(message.deny), "passthrough": list(message.passthrough)}
