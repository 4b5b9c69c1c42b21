"""Which hot path runs: the mypyc-compiled modules (setup.py) or their Python source.

`make test` runs the whole suite on both when the install is compiled, so every other test
checks both variants; these tests check that the switch between them does what it says.
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aserve._build import HOT_PATH_MODULES
from aserve.protocols import http

ROOT = Path(__file__).resolve().parent.parent

PURE_REQUESTED = os.environ.get("ASERVE_NO_EXTENSIONS", "") not in ("", "0")


def _variant_in_subprocess(**env: str) -> str:
    code = (
        "import importlib, aserve.protocols.http as h; from aserve._build import HOT_PATH_MODULES;"
        "print(h.COMPILED, h.__file__,"
        " *(importlib.import_module(m).__file__.endswith('.py') for m in HOT_PATH_MODULES))"
    )
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
    compiled_flag, path, *from_source = _variant_in_subprocess(ASERVE_NO_EXTENSIONS="1").split()
    assert compiled_flag == "False"
    assert path.endswith("http.py")
    assert from_source == ["True"] * len(HOT_PATH_MODULES)


def test_the_switch_is_a_no_op_when_unset():
    if PURE_REQUESTED:
        pytest.skip("this run asked for the pure-Python variant")
    env = {"ASERVE_NO_EXTENSIONS": "0"}
    assert _variant_in_subprocess(**env).split()[0] == str(http.COMPILED)


def test_every_hot_path_module_runs_the_same_variant():
    sources = {importlib.import_module(name).__file__.endswith(".py") for name in HOT_PATH_MODULES}
    assert sources == {not http.COMPILED}


def test_setup_compiles_exactly_the_hot_path_modules():
    tree = ast.parse((ROOT / "setup.py").read_text())
    listed = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and node.targets[0].id == "COMPILED_MODULES"  # type: ignore[attr-defined]
    )
    paths = ast.literal_eval(listed)
    names = {p.removeprefix("src/").removesuffix(".py").replace("/", ".") for p in paths}
    assert names == set(HOT_PATH_MODULES)


def test_the_makefile_rebuilds_on_every_hot_path_module():
    """`make install` rebuilds when a compiled module changes: its HOT_PATH lists them all."""
    makefile = (ROOT / "Makefile").read_text()
    block = makefile.split("HOT_PATH := $(addprefix src/aserve/,", 1)[1].split(")", 1)[0]
    paths = block.replace("\\", " ").split()
    assert {"aserve." + p.removesuffix(".py").replace("/", ".") for p in paths} == set(
        HOT_PATH_MODULES
    )
