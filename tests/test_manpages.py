"""The man pages of the installed tools: rendered by groff, complete, and up to date."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dahu.app.manpage import PAGES, get_parser, render_page, subcommands

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
GROFF = shutil.which("groff")
MAN_CMD = shutil.which("man")
SECTIONS = ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "SEE ALSO"]


def rendered(path: Path) -> str:
    """The page as a reader sees it (plain text), with groff's warnings checked."""
    env = {**os.environ, "LC_ALL": "C.UTF-8", "MANWIDTH": "80"}
    if GROFF:
        command = [GROFF, "-man", "-Tutf8", "-ww", "-P", "-cbou", str(path)]
    elif MAN_CMD:
        command = [MAN_CMD, "-l", str(path)]
    else:
        pytest.fail("neither groff nor man is installed: install the groff-base package")
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", f"{path.name}: {proc.stderr}"
    return re.sub(r".\x08", "", proc.stdout)  # overstrikes, if any


@pytest.mark.parametrize("name", sorted(PAGES))
def test_page_renders_with_every_option(name: str):
    text = rendered(MAN / f"{name}.1")
    for section in SECTIONS:
        assert re.search(rf"^{section}$", text, re.M), f"{name}: no {section} section"
    parser = get_parser(name)
    commands = subcommands(parser)
    if commands:
        assert re.search(r"^COMMANDS$", text, re.M), f"{name}: no COMMANDS section"
    for where, each in [(name, parser)] + [(f"{name} {c}", sub) for c, sub, _ in commands]:
        if each is not parser:
            assert re.search(rf"^ +{re.escape(where)}\b", text, re.M), f"{where} is not described"
        for action in each._actions:  # argparse's list of its options
            for option in action.option_strings:
                assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), (
                    f"{where}: option {option} is not in the man page"
                )
            if not action.option_strings:
                metavar = action.metavar or action.dest.upper()
                assert metavar in text, f"{where}: argument {metavar} is not in the man page"


@pytest.mark.parametrize("name", sorted(PAGES))
def test_committed_page_is_up_to_date(name: str):
    committed = (MAN / f"{name}.1").read_text(encoding="utf-8")
    assert committed == render_page(name), (
        f"man/{name}.1 is out of date: run 'python -m dahu.app.manpage'"
    )


def test_pages_are_installed_with_the_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    installed = config["tool"]["setuptools"]["data-files"]["share/man/man1"]
    assert sorted(installed) == sorted(f"man/{name}.1" for name in PAGES)
    scripts = config["project"]["scripts"]
    assert set(PAGES) <= set(scripts)


def test_generator_writes_and_checks(tmp_path: Path):
    command = [sys.executable, "-m", "dahu.app.manpage", "-o", str(tmp_path)]
    proc = subprocess.run([*command, "--check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1  # the empty directory has no page yet
    assert subprocess.run(command, capture_output=True, timeout=60).returncode == 0
    for name in PAGES:
        assert (tmp_path / f"{name}.1").read_text() == (MAN / f"{name}.1").read_text()
    proc = subprocess.run([*command, "--check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.skipif(MAN_CMD is None, reason="man is not installed")
def test_man_reads_the_page():
    env = {**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"}
    proc = subprocess.run(
        [MAN_CMD, "-l", str(MAN / "dahu-reprocess.1")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--compare" in proc.stdout


def test_dahu_jobs_page_documents_its_exit_codes():
    text = rendered(MAN / "dahu-jobs.1")
    section = text.split("EXIT STATUS", 1)[1].split("SEE ALSO", 1)[0]
    for code in ("0", "1", "2", "3", "4"):
        assert re.search(rf"^ +{code} ", section, re.M), f"exit status {code} not documented"
