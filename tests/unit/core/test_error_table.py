import grpc

from hutch.core import errors
from hutch.core.grpc_runtime import ERROR_FOR_STATUS, STATUS_FOR_ERROR, status_for


def test_every_domain_error_has_its_own_status() -> None:
    subclasses = set(errors.HutchError.__subclasses__())
    assert subclasses == set(STATUS_FOR_ERROR)
    assert len(set(STATUS_FOR_ERROR.values())) == len(STATUS_FOR_ERROR)


def test_codes_round_trip() -> None:
    for cls in STATUS_FOR_ERROR:
        rebuilt = errors.error_for_code(cls.code, "m")
        assert type(rebuilt) is cls and rebuilt.message == "m"
        assert ERROR_FOR_STATUS[status_for(rebuilt)] is cls
    assert isinstance(errors.error_for_code("weird", "m"), errors.Internal)
    assert status_for(errors.NotFound("x")) == grpc.StatusCode.NOT_FOUND
