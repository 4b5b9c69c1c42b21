"""Which hot path runs: the mypyc-compiled `aserve.protocols.http` or its Python source.

`make test` runs the whole suite on both when the install is compiled, so every other test
checks both variants; these tests check that the switch between them does what it says.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aserve.protocols import http

PURE_REQUESTED = os.environ.get("ASERVE_NO_EXTENSIONS", "") not in ("", "0")


def _variant_in_subprocess(**env: str) -> str:
    code = "import aserve.protocols.http as h; print(h.COMPILED, h.__file__)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_the_requested_variant_runs():
    if PURE_REQUESTED:
        assert not http.COMPILED
    if os.environ.get("ASERVE_REQUIRE_COMPILED") == "1":  # set by CI: the build must compile
        assert PURE_REQUESTED or http.COMPILED, f"the hot path is not compiled: {http.__file__}"


def test_no_extensions_selects_the_source():
    compiled_flag, path = _variant_in_subprocess(ASERVE_NO_EXTENSIONS="1").split()
    assert compiled_flag == "False"
    assert path.endswith("http.py")


def test_the_switch_is_a_no_op_when_unset():
    if PURE_REQUESTED:
        pytest.skip("this run asked for the pure-Python variant")
    env = {"ASERVE_NO_EXTENSIONS": "0"}
    assert _variant_in_subprocess(**env).split()[0] == str(http.COMPILED)
