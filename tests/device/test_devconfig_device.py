"""config.json on the MicroPython unix port: for a file `make deploy` refuses
because the board would, the board's first boot prints exactly the line
`make deploy` printed; and the files `make deploy` refuses as not strict JSON
are ones MicroPython's lenient json would have read (and booted with)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.host.test_deploy import BOARD_REFUSALS
from tools import deploy
from tools.unixboard import compile_lib

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compiled_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lib/ compiled as `make deploy` copies it by default."""
    lib = tmp_path_factory.mktemp("mpy")
    compile_lib(lib)
    return lib


@pytest.fixture
def flash(tmp_path: Path) -> Path:
    shutil.copyfile(ROOT / "main.py", tmp_path / "main.py")
    return tmp_path


@pytest.mark.parametrize("compiled", [False, True], ids=["py", "mpy"])
@pytest.mark.parametrize("text", BOARD_REFUSALS, ids=range(len(BOARD_REFUSALS)))
def test_the_board_prints_the_line_make_deploy_refused_the_config_with(
    micropython: Any, flash: Path, compiled_lib: Path, text: str, compiled: bool
) -> None:
    (flash / "config.json").write_text(text, encoding="utf-8")
    proc = micropython.run(
        script=flash / "main.py", cwd=flash, extra_path=(compiled_lib,) if compiled else (), check=False
    )
    assert proc.returncode == 0, proc.stderr  # main.py ends (on a board, at the REPL) with the line
    assert proc.stdout.splitlines() == [BOARD_REFUSALS[text]]
    assert deploy.board_refusal(json.loads(text)) == BOARD_REFUSALS[text]


READ_BACK = """
import devconfig
try:
    cfg = devconfig.load()
    print("took it: template", cfg["template"], "endpoint", cfg["endpoint"])
except devconfig.ConfigError as ex:
    print("refused:", ex)
"""


@pytest.mark.parametrize(
    "text, board",
    [
        # What makes strict JSON on the host worth it: the board reads these without a word.
        ('{"endpoint": "e", "template": "T",}', "took it: template T endpoint e"),
        ('{"endpoint": "e" "template": "T"}', "took it: template T endpoint e"),
        ('{"endpoint": "e", "template" "T"}', "took it: template T endpoint e"),
        ('{"endpoint": "e",, "template": "T"}', "took it: template T endpoint e"),
        ('{"endpoint": "e", "template": "T", "template": "U"}', "took it: template U endpoint e"),
        # ... and these it refuses, less helpfully than the host does.
        ('{"endpoint": "e", "template": "T", "rx_size": NaN}', "refused: config.json is not valid JSON"),
        (
            '{"endpoint": "e", "template": "T", "rx_size": 1e400}',
            "refused: config.json: field 'rx_size' must be an integer, got float inf",
        ),
    ],
)
def test_what_the_boards_json_makes_of_files_make_deploy_refuses_as_not_strict_json(
    micropython: Any, flash: Path, tmp_path: Path, text: str, board: str
) -> None:
    config = tmp_path / "config.json"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(deploy.DeployError, match="is not valid JSON"):
        deploy.read_config(tmp_path)
    out = micropython.run(READ_BACK, cwd=flash).stdout.strip()
    assert out.startswith(board), out
