"""requirements.lock: every package of segtrain's environment at an exact version, used by `make` and the Dockerfile.

    python scripts/lock.py write requirements.lock   # from the running environment (`make lock` builds a fresh one)
    python scripts/lock.py check requirements.lock   # the lock is pyproject.toml's; what segtrain[dev] needs here is it

The lock is a pip constraints file (``pip install -c requirements.lock ...``): it pins what gets installed and
installs nothing by itself, so the same file serves ``make`` (with the ``dev`` and ``sweep`` extras) and the
Docker image (``sweep`` only). Its header records the Python it was resolved for and a digest of
pyproject.toml's dependency lists, so that a changed dependency without a new lock fails the test suite.

torch is written without its local build label (``torch==2.13.0``, not ``2.13.0+cpu``): a CUDA build
of the same version (``2.13.0+cu128``) satisfies the pin, so GPU users keep their build (``TORCH_SPEC``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_LOCKED = {"segtrain"}  # the project itself (an editable install)


def normalize(name: str) -> str:
    """PEP 503 name: ``Hydra_Core`` → ``hydra-core``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def public_version(version: str) -> str:
    """``2.13.0+cpu`` → ``2.13.0``: the pin any build of that version satisfies."""
    return version.split("+", 1)[0]


def project_table() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["project"]


def dependency_digest() -> str:
    """A digest of pyproject.toml's dependencies and extras: the lock is stale when it changes."""
    project = project_table()
    lists = {"dependencies": project.get("dependencies", []), "extras": project.get("optional-dependencies", {})}
    return hashlib.sha256(json.dumps(lists, sort_keys=True).encode()).hexdigest()[:16]


def read_lock(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(``{name: version}``, header ``{key: value}``) of a lock file."""
    pins: dict[str, str] = {}
    header: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep and key.strip() in ("python", "dependencies"):
                header[key.strip()] = value.strip()
            continue
        if line:
            name, sep, version = line.partition("==")
            if not sep:
                raise ValueError(f"{path}: '{line}' is not name==version")
            pins[normalize(name)] = version.strip()
    return pins, header


def installed() -> dict[str, str]:
    """``{name: version}`` of this interpreter's environment."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[normalize(name)] = dist.version
    return found


def requirement_closure(root: str = "segtrain", extras: tuple[str, ...] = ("dev", "sweep")) -> set[str]:
    """Every installed package that ``root[extras]`` needs, directly or not (markers evaluated here)."""
    from packaging.requirements import Requirement

    needed: set[str] = set()
    seen: set[tuple[str, frozenset]] = set()
    todo = [(normalize(root), frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
                continue
            child = normalize(req.name)
            if child != normalize(root):
                needed.add(child)
            todo.append((child, frozenset(req.extras)))
    return needed


def write(path: Path) -> None:
    pins = {name: (public_version(v) if name == "torch" else v) for name, v in installed().items()
            if name not in NOT_LOCKED}
    lines = [
        "# Every package of segtrain's environment, exactly: `make` and the Dockerfile install with -c requirements.lock.",
        "# Regenerate with `make lock` (resolves today's newest allowed versions) and commit; CI checks it (tests/test_lock.py).",
        f"# python: {sys.version_info.major}.{sys.version_info.minor}",
        f"# dependencies: {dependency_digest()}",
        *(f"{name}=={version}" for name, version in sorted(pins.items())),
    ]
    tmp = Path(path).with_name(f".{Path(path).name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def check(path: Path) -> list[str]:
    """What disagrees between the lock, pyproject.toml and this environment (empty: all agree)."""
    pins, header = read_lock(path)
    problems = []
    if header.get("dependencies") != dependency_digest():
        problems.append(f"{path.name} was made for other dependencies than pyproject.toml's: run `make lock`")
    have = installed()
    for name in sorted(requirement_closure()):
        if name not in have:
            problems.append(f"{name} is needed but not installed")
        elif name not in pins:
            problems.append(f"{name}=={have[name]} is needed but not in {path.name}: run `make lock`")
        elif public_version(have[name]) != pins[name]:
            problems.append(f"{name}: installed {have[name]}, {path.name} says {pins[name]}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("write", "check"):
        print("usage: python scripts/lock.py write|check requirements.lock", file=sys.stderr)
        return 2
    path = Path(argv[1])
    if argv[0] == "write":
        write(path)
        return 0
    problems = check(path)
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
