"""The one error this library raises: the message names the entry and what is wrong with it."""

from __future__ import annotations


class PolicyError(ValueError):
    """A policy, host pattern, secret name or header template that cannot be used."""
