"""The install is the lock: requirements.lock pins what pyproject.toml asks for, and the environment
the tests run in holds exactly those versions (make install installs the lock, resolving nothing)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ..projects import REPOSITORY


def pins() -> dict[str, str]:
    """{package: version} of the lock's entries that apply on this machine (their markers hold)."""
    found = {}
    for line in (REPOSITORY / "requirements.lock").read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)\s*(?:;(.*))?$", line)
        if match and (match.group(4) is None or Marker(match.group(4)).evaluate()):
            found[canonicalize_name(match.group(1))] = match.group(3)
    return found


def requirements() -> list[Requirement]:
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    listed = project["dependencies"] + [requirement for extra in extras for requirement in extra]
    return [Requirement(text) for text in listed]


def test_the_lock_pins_a_version_every_requirement_of_pyproject_accepts() -> None:
    locked = pins()
    refused = {str(req): locked.get(canonicalize_name(req.name)) for req in requirements()
               if not req.specifier.contains(locked.get(canonicalize_name(req.name), "0"), prereleases=True)}
    assert refused == {}, "run 'make lock' after changing pyproject.toml"


def test_the_environment_holds_exactly_the_locked_versions() -> None:
    installed = {canonicalize_name(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}
    differ = {name: (version, installed.get(name)) for name, version in pins().items()
              if installed.get(name) != version}
    assert differ == {}, "make install installs requirements.lock: (locked, installed)"
