"""schemas.config: the one strict from_dict rule of every config."""

from dataclasses import dataclass

import pytest

from schemas.config import check_keys, strict_from_dict


@dataclass
class _Cfg:
    a: int = 1
    b: str = "x"


def test_known_keys_build_the_config():
    assert strict_from_dict(_Cfg, {"a": 3}, "test keys") == _Cfg(a=3, b="x")
    assert strict_from_dict(_Cfg, None, "test keys") == _Cfg()


def test_unknown_key_names_what_and_the_known_keys():
    with pytest.raises(ValueError, match=r"unknown test keys: \['c'\] \(known: \['a', 'b'\]\)"):
        check_keys(_Cfg, {"a": 1, "c": 2}, "test keys")


def test_check_keys_returns_a_copy():
    d = {"a": 1}
    out = check_keys(_Cfg, d, "test keys")
    out["a"] = 2
    assert d == {"a": 1}
