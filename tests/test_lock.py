"""Reproducible installs: requirements.lock pins every package; `make` and the Dockerfile install from it and agree;
the README's Docker commands are the image's."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from helpers.cli import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import lock  # noqa: E402 - scripts/lock.py

LOCK = ROOT / "requirements.lock"
PINS, HEADER = lock.read_lock(LOCK)


def make_commands(target: str = "venv") -> list[str]:
    """The shell commands `make` would run for ``target`` from scratch (``make -n -B``, nothing is run)."""
    proc = subprocess.run(["make", "-n", "-B", target, "VENV=/nonexistent/venv"], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def pip_installs(commands: list[str]) -> list[list[str]]:
    """The argument lists of every ``pip install`` among shell commands (``&&`` chains split)."""
    found = []
    for command in commands:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        part: list[str] = []
        for word in [*lexer, ";"]:
            if word in (";", "&&", "||", "|"):
                if "pip" in part and "install" in part:
                    found.append(part[part.index("install") + 1:])
                part = []
            else:
                part.append(word)
    return found


def dockerfile() -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(instructions as (KEYWORD, rest), ARG defaults) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    args = {}
    for keyword, rest in instructions:
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value.strip('"')
    return instructions, args


def torch_spec(words: list[str]) -> str | None:
    return next((w for w in words if w.startswith("torch==")), None)


def test_lock_covers_every_dependency_of_pyproject_within_its_ranges():
    project = lock.project_table()
    lines = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    for line in lines:
        req = Requirement(line)
        if lock.normalize(req.name) == "segtrain":
            continue
        name = lock.normalize(req.name)
        assert name in PINS, f"{name} is a dependency but not in requirements.lock: run make lock"
        assert req.specifier.contains(PINS[name], prereleases=True), (name, str(req.specifier), PINS[name])
    assert "torch" in PINS and "+" not in PINS["torch"]  # a public version: any CUDA build of it satisfies the pin


def test_lock_is_made_for_the_current_pyproject():
    assert HEADER.get("dependencies") == lock.dependency_digest(), "pyproject.toml's dependencies changed: run make lock"
    assert re.fullmatch(r"3\.\d+", HEADER.get("python", "")), HEADER


def test_this_environment_is_the_lock():
    """What `make` installed (CI builds .venv from scratch) is what the lock says, package by package."""
    assert lock.check(LOCK) == []


def test_lock_check_reports_a_version_that_differs(tmp_path):
    changed = tmp_path / "requirements.lock"
    text = LOCK.read_text()
    changed.write_text(re.sub(r"(?m)^numpy==.*$", "numpy==0.0.1", text))
    assert any(p.startswith("numpy: installed") for p in lock.check(changed))
    changed.write_text(re.sub(r"(?m)^# dependencies: .*$", "# dependencies: 0", text))
    assert any("make lock" in p for p in lock.check(changed))


def test_make_installs_everything_from_the_lock():
    installs = pip_installs(make_commands("venv"))
    assert len(installs) >= 2
    for words in installs:
        assert "-c" in words and words[words.index("-c") + 1] == "requirements.lock", words
    assert any(torch_spec(w) == f"torch=={PINS['torch']}" for w in installs), installs
    assert any("-e" in w and '.[dev]' in w for w in installs), installs


def test_dockerfile_installs_from_the_same_lock_as_make():
    instructions, args = dockerfile()
    assert ("COPY", "requirements.lock ./") in instructions
    installs = pip_installs([rest for keyword, rest in instructions if keyword == "RUN"])
    assert installs
    for words in installs:
        assert "-c" in words and words[words.index("-c") + 1] == "requirements.lock", words
    # the same torch as make's default, the lock's version
    make_torch = next(torch_spec(w) for w in pip_installs(make_commands("venv")) if torch_spec(w))
    assert args.get("TORCH_SPEC") == make_torch == f"torch=={PINS['torch']}"
    assert any("${TORCH_SPEC}" in w for w in installs)
    assert any(w[-1].startswith(".[") and "sweep" in w[-1] for w in installs), installs


def test_dockerfile_base_is_pinned_with_the_lock_python_and_runs_as_a_user():
    instructions, _ = dockerfile()
    base = next(rest for keyword, rest in instructions if keyword == "FROM").split()[0]
    assert "@sha256:" in base or re.search(r":\d+\.\d+\.\d+", base), f"base image {base} is not pinned"
    python = re.search(r"python:(\d+\.\d+)\.\d+", base)
    assert python and python.group(1) == HEADER["python"], (base, HEADER["python"])
    user = [rest for keyword, rest in instructions if keyword == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert ("ENTRYPOINT", '["segtrain"]') in instructions


def test_readme_docker_commands_match_the_image():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Docker.*?```bash\n(.*?)```", readme, re.S).group(1)
    commands = [shlex.split(c) for c in block.replace("\\\n", " ").splitlines() if c.strip()]
    build = next(c for c in commands if c[:2] == ["docker", "build"])
    tag = build[build.index("-t") + 1]
    assert build[-1] == "."
    runs = [c for c in commands if c[:2] == ["docker", "run"]]
    assert runs
    instructions, _ = dockerfile()
    env = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    log_dir = re.search(r"SEGTRAIN_LOG_DIR=(\S+)", env).group(1)
    for run in runs:
        mounts = [run[i + 1] for i, word in enumerate(run) if word == "-v"]
        assert any(m.endswith(f":{log_dir}") for m in mounts), (mounts, log_dir)  # runs land outside the container
        image = next(w for w in run[2:] if not w.startswith("-") and w not in mounts and w != "all")
        assert image == tag, (image, tag)


@pytest.mark.skipif(sys.platform == "win32", reason="make")
def test_make_lock_writes_the_lock_from_a_fresh_environment():
    commands = make_commands("lock")
    assert any("scripts/lock.py write requirements.lock" in c for c in commands)
