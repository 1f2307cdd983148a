import re

import pytest

from hutch.core import errors
from hutch_gateway.domain import Limits, new_id, next_incarnation, start_snapshot, tenant_id_for, validate_create

LIMITS = Limits(max_cpu_millis=8000, max_memory_mb=16384)


def create(**overrides: object) -> object:
    args: dict[str, object] = {
        "template": "",
        "name": "",
        "cpu_millis": 0,
        "memory_mb": 0,
        "metadata": {},
        "envs": {},
        "timeout_seconds": 0,
        "limits": LIMITS,
    }
    args.update(overrides)
    return validate_create(**args)  # type: ignore[arg-type]


def test_defaults_are_filled_in() -> None:
    request = create()
    assert (request.template, request.cpu_millis, request.memory_mb) == ("base", 1000, 512)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("cpu_millis", 50, "cpu must be between"),
        ("cpu_millis", 9000, "cpu must be between"),
        ("memory_mb", 10, "memory_mb must be between"),
        ("memory_mb", 10**9, "memory_mb must be between"),
        ("name", "Bad Name!", "is not valid"),
        ("name", "-x", "is not valid"),
        ("name", "sb-abc", "may not start with"),
        ("template", "../etc", "not a valid template name"),
        ("timeout_seconds", 10**9, "timeout must be at most"),
        ("metadata", {"bad key": "v"}, "metadata key"),
        ("metadata", {f"k{i}": "v" for i in range(65)}, "at most 64 metadata"),
        ("envs", {"1BAD": "v"}, "environment variable name"),
        ("envs", {"A": "x\0y"}, "NUL byte"),
        ("envs", {"A": "x" * 300_000}, "add up to"),
    ],
)
def test_bad_values_are_refused_naming_the_field(field: str, value: object, needle: str) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        create(**{field: value})
    assert needle in info.value.message


def test_good_names_pass() -> None:
    for name in ("a", "my-agent-1", "x" * 63):
        assert create(name=name).name == name  # type: ignore[attr-defined]


def test_ids_are_prefixed_and_unique() -> None:
    ids = {new_id("sb-") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("sb-") and len(i) == 23 for i in ids)


def test_the_first_start_from_a_snapshot_is_named_by_it_and_each_try_after_a_failure_anew() -> None:
    assert next_incarnation("", "snap-a") == "snap-a"
    assert next_incarnation("snap-a", "snap-a") == "snap-a~2"
    assert next_incarnation("snap-a~2", "snap-a") == "snap-a~3"
    assert next_incarnation("snap-a~3", "snap-b") == "snap-b"  # paused again since: a new snapshot
    assert [start_snapshot(i) for i in ("", "snap-a", "snap-a~3")] == ["", "snap-a", "snap-a"]


def test_a_tenants_id_follows_from_its_name_alone() -> None:
    # Every region derives the same id for a tenant, so its sandboxes and usage meet under one id.
    assert tenant_id_for("acme") == tenant_id_for("acme")
    assert tenant_id_for("acme") != tenant_id_for("acme-2")
    assert re.fullmatch(r"tn-[a-z2-7]{20}", tenant_id_for("acme"))
