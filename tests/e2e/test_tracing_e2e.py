"""One trace follows a create from the SDK through the gateway, NATS, the scheduler and the node-agent.

The local stack exports every service's spans to `<HUTCH_HOME>/local/logs/traces.jsonl`, one JSON
span a line (`ReadableSpan.to_json`); the services export in batches, so the test polls the file.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from hutch import NotFoundError, Sandbox, SandboxError

pytestmark = pytest.mark.e2e

CREATE_METHOD = "/hutch.v1.Sandboxes/Create"


def _spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    spans = []
    for line in path.read_text().splitlines():
        try:
            spans.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written right now
            continue
    return spans


def _service(span: dict[str, Any]) -> str:
    return str(span.get("resource", {}).get("attributes", {}).get("service.name", ""))


def _mentions(span: dict[str, Any], sandbox_id: str) -> bool:
    return sandbox_id in span.get("name", "") or any(
        sandbox_id in str(value) for value in span.get("attributes", {}).values()
    )


def _trace_of(spans: list[dict[str, Any]], sandbox_id: str) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """The trace that mentions the sandbox and spans the most services, with its spans by service."""
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for span in spans:
        by_trace[span["context"]["trace_id"]].append(span)
    best: tuple[str, dict[str, list[dict[str, Any]]]] = ("", {})
    for trace_id, members in by_trace.items():
        if not any(_mentions(span, sandbox_id) for span in members):
            continue
        services: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for span in members:
            services[_service(span)].append(span)
        if len(services) > len(best[1]):
            best = (trace_id, dict(services))
    return best


def test_one_trace_covers_a_create_across_four_services(local_stack: Any) -> None:
    # The caller's own span: the SDK sends its context as `traceparent`, so the services' spans join it.
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    traces = local_stack.home / "local" / "logs" / "traces.jsonl"
    with tracer.start_as_current_span("caller") as caller:
        sandbox = Sandbox.create(cpu=0.25, memory_mb=128, api_key=local_stack.api_key, endpoint=local_stack.endpoint)
    caller_trace = f"0x{caller.get_span_context().trace_id:032x}"
    try:
        trace_id, services = "", {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            trace_id, services = _trace_of(_spans(traces), sandbox.id)
            if {"gateway", "scheduler", "node-agent"} <= services.keys() and len(services) >= 4:
                break
            time.sleep(0.5)
        print({service: sorted({span["name"] for span in spans}) for service, spans in services.items()})
        assert len(services) >= 4, f"trace {trace_id or '(none)'} spans only {sorted(services)}"
        assert {"gateway", "scheduler", "node-agent"} <= services.keys(), sorted(services)
        assert trace_id == caller_trace, "the services' spans did not join the caller's trace"
        gateway = [span["name"] for span in services["gateway"]]
        assert CREATE_METHOD in gateway, gateway
        # The gateway's projection of the node's `sandbox.started` closes the loop in the same trace.
        assert any(name == "handle sandbox.started" for name in gateway), gateway
    finally:
        try:
            sandbox.kill()
        except (NotFoundError, SandboxError):
            pass
        sandbox.close()
