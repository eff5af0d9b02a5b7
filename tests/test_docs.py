import re
import subprocess

import pytest
import yaml

from fedml.config import SECTIONS

from .conftest import ROOT


def test_configuration_reference_lists_every_key_with_its_default():
    text = (ROOT / "docs" / "configuration.md").read_text()
    for section, model in SECTIONS.items():
        body = text.split(f"### {section}\n", 1)[1].split("\n### ", 1)[0]
        for key, field in model.model_fields.items():
            row = re.search(rf"^\| `{key}` \| `([^`]*)` \|", body, re.MULTILINE)
            assert row, f"{section}.{key} is not documented"
            documented = yaml.safe_load(row.group(1))
            assert documented == field.get_default(call_default_factory=True), (
                f"{section}.{key}: documented default differs"
            )


SKIP_MARK = "<!-- not run by tests/test_docs.py:"
BLOCK = re.compile(r"(<!-- not run by tests/test_docs\.py:[^\n]*-->\n)?```(?:bash|sh)\n(.*?)```", re.DOTALL)


def shell_blocks():
    """Every bash block of README.md and docs/, with whether it is marked as not run and why."""
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for match in BLOCK.finditer(path.read_text()):
            yield path.relative_to(ROOT), match.group(1) is not None, match.group(2)


def commands(block):
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [
        line.split("  #")[0].strip()
        for line in joined.splitlines()
        if line.strip() and not line.startswith("#")
    ]


def test_every_shell_block_runs_as_written_after_the_quick_start_or_says_why_not():
    for path, skipped, block in shell_blocks():
        for command in commands(block):
            assert skipped or command.startswith(".venv/bin/"), (
                f"{path}: {command!r} does not run as written after the Quick start; use .venv/bin/ or "
                f"mark the block with {SKIP_MARK} reason -->"
            )


RUN = [
    (str(path), command)
    for path, skipped, block in shell_blocks()
    if not skipped
    for command in commands(block)
]


@pytest.mark.parametrize(("path", "command"), RUN)
def test_a_documented_command_runs(path, command):
    done = subprocess.run(
        command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{path}: {command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert "Final Accuracy after Round" in done.stdout


def test_make_demo_and_make_test_say_what_the_silent_install_does():
    for target in ("demo", "test"):
        done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True)
        assert "Installing fedml" in done.stdout.split("pip install")[0]


def test_the_quick_benchmark_is_a_smoke_run():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "simulation_speed", ROOT / "benchmarks" / "simulation_speed.py"
    )
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    for case, settings in speed.CASES.items():
        quick = {**settings, **speed.QUICK[case]}
        assert quick["comm_round"] * quick["client_num_per_round"] <= 300, case
