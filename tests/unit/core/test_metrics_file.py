"""The metrics file exporter (one JSON line per export) and the request rates `hutch local status` reads."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from hutch.core.config import TelemetrySettings
from hutch.core.telemetry import JsonLinesMetricExporter, metrics_file
from hutch.local.rates import request_rates


def test_metrics_go_next_to_the_traces_unless_told_otherwise(tmp_path: Path) -> None:
    spans = tmp_path / "logs" / "traces.jsonl"
    assert metrics_file(TelemetrySettings(exporter="file", file_path=str(spans))) == tmp_path / "logs" / "metrics.jsonl"
    elsewhere = tmp_path / "m.jsonl"
    settings = TelemetrySettings(exporter="file", file_path=str(spans), metrics_file_path=str(elsewhere))
    assert metrics_file(settings) == elsewhere


def _export(path: Path, service: str, calls: int) -> None:
    """One export of a process that answered `calls` requests, as the services' exporter writes it."""
    reader = PeriodicExportingMetricReader(JsonLinesMetricExporter(path), export_interval_millis=3_600_000)
    provider = MeterProvider(resource=Resource.create({"service.name": service}), metric_readers=[reader])
    counter = provider.get_meter("test").create_counter("rpc.server.requests")
    counter.add(calls, {"rpc.method": "Create", "rpc.grpc.status_code": grpc.StatusCode.OK.value[0]})
    provider.shutdown()  # exports once more, then closes the file


def test_each_export_is_one_json_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    _export(path, "gateway", 3)
    _export(path, "scheduler", 1)
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    services = [json.loads(line)["resource_metrics"][0]["resource"]["attributes"]["service.name"] for line in lines]
    assert services == ["gateway", "scheduler"]
    point = json.loads(lines[0])["resource_metrics"][0]["scope_metrics"][0]["metrics"][0]["data"]["data_points"][0]
    assert point["value"] == 3


def _line(service: str, instance: str, at_s: float, total: int) -> str:
    point = {"attributes": {}, "time_unix_nano": int(at_s * 1e9), "value": total}
    metric = {"name": "rpc.server.requests", "data": {"data_points": [point]}}
    resource = {
        "resource": {"attributes": {"service.name": service, "service.instance.id": instance}},
        "scope_metrics": [{"metrics": [metric]}],
    }
    return json.dumps({"resource_metrics": [resource]})


def test_request_rates_come_from_each_services_last_two_exports(tmp_path: Path) -> None:
    now = time.time()
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        "\n".join(
            [
                _line("gateway", "old", now - 3600, 10),  # an earlier run: ignored
                _line("gateway", "a", now - 10, 100),
                _line("scheduler", "b", now - 9, 7),
                _line("gateway", "a", now - 5, 150),
                '{"torn',
                _line("scheduler", "b", now - 4, 7),
                _line("billing-meter", "c", now - 4, 2),  # one export only: no rate yet
            ]
        )
        + "\n"
    )
    rates = request_rates(path)
    assert rates.keys() == {"gateway", "scheduler"}
    assert abs(rates["gateway"] - 10.0) < 0.01
    assert rates["scheduler"] == 0.0


def test_no_file_no_rates(tmp_path: Path) -> None:
    assert request_rates(tmp_path / "missing.jsonl") == {}
