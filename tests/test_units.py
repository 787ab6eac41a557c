import pytest

from advisor.errors import UserError
from advisor.units import parse_duration_s, parse_latency_ms, parse_shape


@pytest.mark.parametrize("text, expected", [("400ms", 400.0), ("0.4s", 400.0), ("400", 400.0), ("250us", 0.25),
                                            (" 12.5 ms ", 12.5)])
def test_latency_forms(text, expected):
    assert parse_latency_ms(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["abc", "-5ms", "0", "0ms", "5 parsecs", "", "nan", "1e999"])
def test_latency_rejects(text):
    with pytest.raises(UserError):
        parse_latency_ms(text)


@pytest.mark.parametrize("text, expected", [("90s", 90.0), ("3m", 180.0), ("1h", 3600.0), ("120", 120.0)])
def test_durations(text, expected):
    assert parse_duration_s(text) == expected


def test_shape():
    assert parse_shape("input_ids=1,128") == ("input_ids", (1, 128))
    assert parse_shape("a=b=1,2") == ("a=b", (1, 2))
    for bad in ("x", "x=", "=1", "x=1,a", "x=0,3"):
        with pytest.raises(UserError):
            parse_shape(bad)
