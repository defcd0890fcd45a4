"""The console scripts' entry points (``dahu_scripts``): a Ctrl-C while a tool is
imported is one line and the status 130, not a traceback."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import dahu_scripts as scripts

ROOT = Path(__file__).resolve().parent.parent
TOOLS = {  # script: (module, function) it runs
    "dahu_server": ("dahu.app.server", "cli"),
    "dahu-register": ("dahu.app.register", "main"),
    "dahu-reprocess": ("dahu.app.reprocess", "cli"),
    "dahu-jobs": ("dahu.app.jobs", "main"),
    "dahu-demo": ("dahu.app.demo", "main"),
}


def test_ctrl_c_while_a_tool_is_imported_is_one_line_and_130(tmp_path: Path):
    # bug: a Ctrl-C in the first tenth of a second of dahu-reprocess (dahu-jobs,
    # dahu-demo, dahu_server) printed a KeyboardInterrupt traceback of the imports; here
    # the tool's module takes as long as needed to be imported: it waits for the signal
    (tmp_path / "slow_tool.py").write_text(
        "import sys, time\n"
        "print('importing', flush=True)\n"
        "time.sleep(60)\n\n\n"
        "def main():\n"
        "    return 0\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    code = "import sys; from dahu_scripts import run; sys.exit(run('dahu-x', 'slow_tool', 'main'))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout.readline() == "importing\n"  # the import has begun
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert (proc.returncode, stderr) == (130, "dahu-x: interrupted\n")


def test_every_script_runs_its_tool_through_the_wrapper(monkeypatch, capsys):
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entries = config["project"]["scripts"]
    assert set(entries) == set(TOOLS)
    called: list[tuple] = []
    monkeypatch.setattr(scripts, "run", lambda *args: called.append(args))
    for name, entry in entries.items():
        module, function = TOOLS[name]
        target, _, attribute = entry.partition(":")
        assert target == "dahu_scripts"
        called.clear()
        getattr(scripts, attribute)()
        assert called == [(name, module, function)]
        assert callable(getattr(importlib.import_module(module), function))
    monkeypatch.undo()
    # a real run: the tool's own status and output
    monkeypatch.setattr(sys, "argv", ["dahu-jobs", "--version"])
    assert scripts.dahu_jobs() == 0
    assert capsys.readouterr().out.startswith("dahu-jobs ")
