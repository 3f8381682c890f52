"""Wheels of the dev environment's installed distributions, for offline installs.

The packaging test installs the built socker-steps wheel into fresh virtual
environments with `pip install --no-index --find-links`, so it needs wheels of
the dependencies without the network (pytest runs where only loopback exists).
The dev environment already has every dependency installed; `repack` zips one
installed distribution back into a wheel: the files its RECORD lists (minus
byte code and anything outside site-packages, such as console scripts, which pip
writes again from entry_points.txt), its dist-info, a fresh RECORD with hashes,
and the platform tag from its own WHEEL file. Same files, same versions, same
machine: deterministic, and no index is asked.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as metadata
import re
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def repack(dist: metadata.Distribution, into: Path) -> Path:
    """Write `dist` (an installed distribution) as a wheel in `into`; return its path."""
    wheel_text = dist.read_text("WHEEL") or ""
    tags = re.findall(r"^Tag: (\S+)$", wheel_text, re.MULTILINE)
    if not tags:
        raise ValueError(f"{dist.metadata['Name']}: no Tag in its WHEEL file")
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    version = dist.version
    tag = tags[0]
    target = into / f"{name}-{version}-{tag}.whl"
    dist_info = None
    records = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as wheel:
        for file in dist.files or ():
            path = str(file)
            if path.startswith("..") or "__pycache__" in path or path.endswith(".pyc"):
                continue
            if path.endswith(".dist-info/RECORD"):
                dist_info = path.rsplit("/", 1)[0]
                continue
            if path.endswith((".dist-info/INSTALLER", ".dist-info/REQUESTED")):
                continue
            if path.endswith(".dist-info/direct_url.json"):
                continue
            located = Path(str(file.locate()))
            if not located.is_file():
                continue
            data = located.read_bytes()
            wheel.writestr(path, data)
            records.append(_record_line(path, data))
        if dist_info is None:
            raise ValueError(f"{name}: no RECORD among its files")
        records.append(f"{dist_info}/RECORD,,")
        wheel.writestr(f"{dist_info}/RECORD", "\n".join(records) + "\n")
    return target


def requirement_closure(requirements: list[str]) -> set[str]:
    """The installed distributions `requirements` need, recursively (markers evaluated
    for this interpreter, extras followed)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    todo = [(Requirement(text), frozenset({""})) for text in requirements]
    while todo:
        requirement, active = todo.pop()
        if requirement.marker is not None and not any(
            requirement.marker.evaluate({"extra": extra}) for extra in active
        ):
            continue
        key = canonicalize_name(requirement.name)
        wanted = frozenset({"", *requirement.extras})
        if (key, wanted) in seen:
            continue
        seen.add((key, wanted))
        names.add(key)
        for text in metadata.distribution(requirement.name).requires or ():
            todo.append((Requirement(text), wanted))
    return names


def build_wheelhouse(requirements: list[str], into: Path) -> list[Path]:
    """Repack every installed distribution that `requirements` need into `into`."""
    into.mkdir(parents=True, exist_ok=True)
    return [
        repack(metadata.distribution(name), into)
        for name in sorted(requirement_closure(requirements))
    ]
