"""Which isolation class a sandbox gets. Pure logic.

Two classes run on Hutch's nodes: `container` (crun: namespaces, cgroups, seccomp and capabilities
around the host kernel; fast) and `gvisor` (runsc: a user-space kernel between the code and the
host; for untrusted code). `auto` picks from the caller's trust: untrusted code gets gVisor. A
tenant's policy may forbid a class and sets the trust assumed when the caller gives none.
"""

from __future__ import annotations

from dataclasses import dataclass

from hutch.core import errors

CONTAINER = "container"
GVISOR = "gvisor"
CLASSES = (CONTAINER, GVISOR)
TRUSTED = "trusted"
UNTRUSTED = "untrusted"


@dataclass(frozen=True)
class IsolationPolicy:
    allowed: frozenset[str] = frozenset(CLASSES)
    default_trust: str = TRUSTED


def choose_isolation(isolation: str, trust: str, policy: IsolationPolicy) -> str:
    """The class to run a sandbox under, or an error that says what to ask for instead."""
    isolation = isolation.strip().lower()
    trust = trust.strip().lower() or policy.default_trust
    if trust not in (TRUSTED, UNTRUSTED):
        raise errors.InvalidArgument(f"trust must be 'trusted' or 'untrusted' (got {trust!r})")
    if isolation == "microvm":
        raise errors.FailedPrecondition(
            "isolation 'microvm' is not offered: microVMs need hardware virtualisation that these nodes "
            "do not have; use isolation='gvisor' for a kernel boundary around untrusted code"
        )
    if isolation in ("", "auto"):
        chosen = GVISOR if trust == UNTRUSTED else CONTAINER
        if chosen not in policy.allowed and GVISOR in policy.allowed:
            chosen = GVISOR  # a stronger boundary than asked for is always acceptable
    elif isolation in CLASSES:
        chosen = isolation
    else:
        raise errors.InvalidArgument(f"isolation must be 'auto', 'container' or 'gvisor' (got {isolation!r})")
    if chosen not in policy.allowed:
        allowed = ", ".join(sorted(policy.allowed)) or "none"
        raise errors.PermissionDenied(
            f"this tenant's policy does not allow the {chosen!r} isolation class (allowed: {allowed})"
        )
    return chosen
