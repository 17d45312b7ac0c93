"""The Lua scripts ship as files with their contract in a header, and are installed with the package."""

import configparser
import pathlib
import re

import pytest

from geventsched.store import lua_script

ROOT = pathlib.Path(__file__).resolve().parent.parent
LUA = sorted((ROOT / "geventsched" / "lua").glob("*.lua"))


def _header_and_body(text):
    lines = text.splitlines()
    n = 0
    while n < len(lines) and lines[n].startswith("--"):
        n += 1
    return "\n".join(lines[:n]), "\n".join(lines[n:])


def test_there_are_scripts():
    assert len(LUA) >= 12


@pytest.mark.parametrize("path", LUA, ids=lambda p: p.name)
def test_each_script_documents_every_key_and_argument_it_uses(path):
    header, body = _header_and_body(path.read_text())
    assert header.startswith(f"-- {path.name}: "), "the header names the script and what it does"
    assert "Returns" in header
    for kind in ("KEYS", "ARGV"):
        used = {int(n) for n in re.findall(kind + r"\[(\d+)\]", body)}
        documented = {int(n) for n in re.findall(r"^-- " + kind + r"\[(\d+)\]", header, re.M)}
        assert used <= documented, f"{kind} used but not in the header: {sorted(used - documented)}"


def test_scripts_load_by_name():
    assert lua_script("finish") == (ROOT / "geventsched" / "lua" / "finish.lua").read_text()
    assert lua_script("finish") is lua_script("finish")  # read once


def test_scripts_are_package_data():
    """``pip install`` puts only what setup.cfg names next to the modules: without this line the
    installed package would have no scripts (the build itself is checked by hand: ``pip wheel``)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    patterns = cfg.get("options.package_data", "geventsched").split()
    for path in LUA:
        assert any(path.relative_to(ROOT / "geventsched").match(p) for p in patterns), path.name
