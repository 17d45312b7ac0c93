import pytest

from geventsched.channels import MAX_CHANNELS, parse_channels
from geventsched.errors import ConfigError


@pytest.mark.parametrize("spec, expected", [
    ("3", ["1", "2", "3"]),
    ("1", ["1"]),
    (" 2 ", ["1", "2"]),
    ("2-5", ["2", "3", "4", "5"]),
    ("4-4", ["4"]),
    ("1,3,7", ["1", "3", "7"]),
    ("a,b", ["a", "b"]),
    ("gpu, 2-3 ,cpu,9", ["gpu", "2", "3", "cpu", "9"]),
    ("07,7", ["7"]),
    ("CHANNEL_X,a-b", ["CHANNEL_X", "a-b"]),
])
def test_parse_channels_expands_spec(spec, expected):
    assert parse_channels(spec) == expected


def test_parse_channels_drops_repeats_keeping_first_position():
    assert parse_channels("5,1-3,2,a,5,a,b,1") == ["5", "1", "2", "3", "a", "b"]


def test_parse_channels_accepts_exactly_the_maximum():
    assert len(parse_channels(str(MAX_CHANNELS))) == MAX_CHANNELS


@pytest.mark.parametrize("spec", [
    None, "", "   ", "0", "00", "5-2", "0-3", "1,,2", "1,", ",1", "1,0",
    "a b", "gpu,my channel", "x" * 201,
    str(MAX_CHANNELS + 1), f"1-{MAX_CHANNELS + 1}", f"1-{MAX_CHANNELS},x",
])
def test_parse_channels_rejects_bad_spec_with_config_error(spec):
    with pytest.raises(ConfigError):
        parse_channels(spec)


@pytest.mark.parametrize("spec", ["\u00b2", "1,\u00b3", "1-\u00b2"])
def test_parse_channels_raises_nothing_but_config_error_for_unicode_digits(spec):
    # "\u00b2".isdigit() is True but int("\u00b2") raises ValueError; the contract is ConfigError or a list.
    try:
        assert all(isinstance(name, str) for name in parse_channels(spec))
    except ConfigError:
        pass
