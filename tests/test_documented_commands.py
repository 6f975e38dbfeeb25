"""Every command the docs tell a user to run, run in a dry mode: its config composes and its grid validates,
its make target exists, its module imports. A recipe that would fail for a user fails here first."""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from idlekv.config import compose
from phases.grid import validate_grid

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("phases/*/README.md")),
        ROOT / "models" / "README.md", ROOT / "ruler" / "README.md"]


def documented_commands() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", doc.read_text(), flags=re.S):
            for command in re.sub(r"\\\n\s*", " ", block).splitlines():
                command = command.split("  #")[0].strip()
                if command.startswith(("python", "make ")):
                    out.append((doc.relative_to(ROOT).as_posix(), command))
    return out


def first_of_sweep(value: str) -> str:
    """`[8],[16]` or `a,b` (a sweep) -> its first value; a plain list stays."""
    depth, part = 0, ""
    for ch in value:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            break
        part += ch
    return part


COMMANDS = documented_commands()


def test_the_docs_have_commands():
    assert len(COMMANDS) > 10


@pytest.mark.parametrize("doc, command", COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_documented_command_runs_dry(doc, command):
    words = shlex.split(command)
    if words[0] == "make":
        targets = re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M)
        assert words[1] in targets, f"{doc}: make {words[1]} is not a target"
        return
    module = words[words.index("-m") + 1]
    assert importlib.util.find_spec(module) is not None, f"{doc}: no module {module}"
    arguments = words[words.index(module) + 1:]
    if not module.startswith("phases.") or any("=" not in w and not w.startswith("-") for w in arguments):
        return  # not a Hydra entry point: it takes plain arguments
    overrides = [first_of_sweep(w) for w in arguments if w not in ("-m", "--multirun") and not w.startswith(("hydra", "--cfg", "--"))]
    cfg = compose(overrides)
    assert "phase" in cfg, f"{doc}: {command} names no experiment"
    model = ROOT / cfg.model.path / "config.json"
    max_positions = __import__("json").loads(model.read_text()).get("max_position_embeddings") if model.exists() else None
    validate_grid(cfg, max_positions)
