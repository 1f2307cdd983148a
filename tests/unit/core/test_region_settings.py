"""The regions settings every service reads: names, peer lists and per-region addresses."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from hutch.core.config import RegionAddresses, ServiceSettings

ADDRESSES: TypeAdapter[dict[str, str]] = TypeAdapter(RegionAddresses)


def test_peer_regions_come_from_a_comma_list_nearest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUTCH_REGION", "eu-west")
    monkeypatch.setenv("HUTCH_PEER_REGIONS", " us-east, ap-south ,")
    settings = ServiceSettings()
    assert settings.peer_regions == ("us-east", "ap-south")
    assert settings.all_regions() == ("eu-west", "us-east", "ap-south")


def test_no_peers_is_a_single_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HUTCH_PEER_REGIONS", raising=False)
    monkeypatch.setenv("HUTCH_REGION", "solo")
    assert ServiceSettings().all_regions() == ("solo",)


@pytest.mark.parametrize(
    ("peers", "complaint"),
    [("eu-west", "own region"), ("us-east,us-east", "named twice"), ("US_EAST", "lowercase")],
)
def test_bad_peer_lists_are_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, peers: str, complaint: str
) -> None:
    monkeypatch.setenv("HUTCH_REGION", "eu-west")
    monkeypatch.setenv("HUTCH_PEER_REGIONS", peers)
    with pytest.raises(ValidationError, match=complaint):
        ServiceSettings()


def test_addresses_keep_their_order() -> None:
    parsed = ADDRESSES.validate_python("us-east=10.0.0.5:50051, ap-south=gw.ap.example:443")
    assert list(parsed.items()) == [("us-east", "10.0.0.5:50051"), ("ap-south", "gw.ap.example:443")]


@pytest.mark.parametrize("value", ["us-east", "us-east=10.0.0.5", "us-east=:50051", "us-east=h:0", "us-east=h:99999"])
def test_an_address_without_host_and_port_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="REGION=HOST:PORT"):
        ADDRESSES.validate_python(value)


def test_a_region_named_twice_in_addresses_is_refused() -> None:
    with pytest.raises(ValidationError, match="named twice"):
        ADDRESSES.validate_python("a=h:1,a=h:2")
