"""Secret names, placeholders (`hutch-secret://NAME`) and header templates.

A sandbox's environment may hold `hutch-secret://GITHUB_TOKEN`; the egress-proxy swaps the value in
on the wire, in headers and in the URL (where a client may have percent-encoded the `://`), for the
hosts a grant names, and refuses the request for any other host, so a placeholder never carries a
secret where it was not meant to go.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from hutch.egress_policy.errors import PolicyError

SECRET_NAME = r"[A-Za-z_][A-Za-z0-9_.-]{0,127}"
_SECRET_NAME = re.compile(rf"^{SECRET_NAME}$")
PLACEHOLDER_PREFIX = "hutch-secret://"
_PLACEHOLDER = re.compile(rf"hutch-secret(?:://|%3a%2f%2f)({SECRET_NAME})", re.IGNORECASE)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
VALUE_FIELD = "{value}"


def check_secret_name(name: str) -> str:
    if not _SECRET_NAME.match(name or ""):
        raise PolicyError(
            f"secret name {name!r} is not valid: 1-128 letters, digits, '_', '.' or '-', starting with a letter or '_'"
        )
    return name


def placeholder(name: str) -> str:
    return PLACEHOLDER_PREFIX + name


def find_placeholders(text: str) -> set[str]:
    """The secret names whose placeholders occur in `text`."""
    return {match[1] for match in _PLACEHOLDER.finditer(text)}


def replace_placeholders(text: str, values: dict[str, str], *, url: bool = False) -> str:
    """`text` with every placeholder of a name in `values` replaced (percent-encoded in a URL)."""

    def swap(match: re.Match[str]) -> str:
        value = values.get(match[1])
        if value is None:
            return match[0]
        return quote(value, safe="") if url else value

    return _PLACEHOLDER.sub(swap, text)


@dataclass(frozen=True)
class HeaderTemplate:
    """ "Authorization: Bearer {value}" split into the header's name and its value's template."""

    name: str
    template: str

    def render(self, value: str) -> str:
        return self.template.replace(VALUE_FIELD, value)

    def __str__(self) -> str:
        return f"{self.name}: {self.template}"


def parse_header_template(text: str) -> HeaderTemplate:
    name, colon, template = text.partition(":")
    name, template = name.strip(), template.strip()
    if not colon or not _HEADER_NAME.match(name):
        raise PolicyError(f"header {text!r} must look like 'Authorization: Bearer {VALUE_FIELD}'")
    if VALUE_FIELD not in template:
        raise PolicyError(f"header {text!r} must contain {VALUE_FIELD} where the secret goes")
    if any(ch in template for ch in "\r\n\0"):
        raise PolicyError(f"header {text!r} may not contain line breaks")
    if name.lower() in ("host", "content-length", "transfer-encoding", "connection"):
        raise PolicyError(f"header {name!r} cannot carry a secret")
    return HeaderTemplate(name, template)


def fits_in_header(value: str) -> bool:
    """A value with a line break or NUL would split or end the header it is put in."""
    return not any(ch in value for ch in "\r\n\0")


Lookup = Callable[[str], str | None]
