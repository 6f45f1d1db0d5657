"""Building one Lambda artifact: wheels in, a pruned tree and a reproducible zip out.

Steps, each a function (tests run them on small fixture wheels): :func:`fetch` the pinned
wheels for the target (``pip download --no-deps``: nothing beyond the pins), :func:`unpack`
them (a wheel is a zip; its ``.data/purelib|platlib`` go to the root, scripts and headers are
dropped), :func:`prune` tests, stubs, sources and unused subpackages, :func:`add_source` our
packages, :func:`check` the tree, :func:`write_zip` it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

from deploy.packaging.catalogue import (
    BOTOCORE_SERVICES,
    PRUNED_DIRS,
    PRUNED_SUFFIXES,
    Artifact,
    Target,
)

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # every entry: the zip is the same for the same inputs


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them: ``Aws_Kinesis.Agg`` -> ``aws-kinesis-agg``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(requirements: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file (normalized name -> version); anything
    else (a range, a URL, an option) is refused: the artifact is built from pins only."""
    out: dict[str, str] = {}
    for number, raw in enumerate(requirements.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        found = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!_-]+)", line)
        if not found:
            raise ValueError(f"{requirements}:{number}: not an exact pin: {line!r}")
        out[normalize(found[1])] = found[2]
    return out


def wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return normalize(name), version


def fetch(requirements: Path, target: Target, dest: Path, pip: Iterable[str] = ()) -> list[Path]:
    """The pinned wheels for ``target`` in ``dest`` (downloaded when missing), one per pin."""
    wanted = pins(requirements)
    dest.mkdir(parents=True, exist_ok=True)
    have = {wheel_name_version(p): p for p in dest.glob("*.whl")}
    if any((n, v) not in have for n, v in wanted.items()):
        cmd = [*(pip or [sys.executable, "-m", "pip"]), "download", "--quiet", "--no-deps",
               "--disable-pip-version-check", *target.pip_args(), "--dest", str(dest),
               "-r", str(requirements)]
        subprocess.run(cmd, check=True)
        have = {wheel_name_version(p): p for p in dest.glob("*.whl")}
    missing = [f"{n}=={v}" for n, v in wanted.items() if (n, v) not in have]
    if missing:
        raise RuntimeError(f"no wheel for {', '.join(missing)} in {dest}")
    return sorted(have[(n, v)] for n, v in wanted.items())


def unpack(wheels: Iterable[Path], tree: Path) -> None:
    """Install wheels into ``tree`` the way Lambda reads them: everything at the root."""
    tree.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                parts = info.filename.split("/")
                if info.is_dir():
                    continue
                if parts[0].endswith(".data"):
                    if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                        continue  # scripts, headers, data: not importable code
                    parts = parts[2:]
                out = tree.joinpath(*parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                mode = (info.external_attr >> 16) & 0o777
                out.chmod(0o755 if mode & 0o111 or out.suffix == ".so" or ".so." in out.name
                          else 0o644)


def _remove(path: Path) -> int:
    if path.is_dir():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        shutil.rmtree(path)
        return size
    size = path.stat().st_size
    path.unlink()
    return size


def prune(tree: Path, subpackages: dict[str, tuple[str, ...]],
          botocore_services: Iterable[str] = BOTOCORE_SERVICES) -> int:
    """Drop what no handler runs; returns the bytes removed."""
    removed = 0
    for package, subs in subpackages.items():
        for sub in subs:
            path = tree / package / sub
            if path.exists():
                removed += _remove(path)
    data = tree / "botocore" / "data"
    if data.is_dir():
        keep = set(botocore_services)
        for entry in sorted(data.iterdir()):
            if entry.is_dir() and entry.name not in keep:
                removed += _remove(entry)
    for path in sorted(tree.rglob("*"), reverse=True):  # children before their parents
        if not path.exists():
            continue
        if ((path.is_dir() and path.name in PRUNED_DIRS)
                or (path.is_file() and path.name.endswith(PRUNED_SUFFIXES))):
            removed += _remove(path)
    return removed


def add_source(root: Path, tree: Path, packages: Iterable[str], excluded: Iterable[str]) -> None:
    """Our packages' ``.py`` files (and package data such as ``py.typed``) into ``tree``."""
    skip = [root / e for e in excluded]
    for package in packages:
        for path in sorted((root / package).rglob("*")):
            if (not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc"
                    or any(path == s or s in path.parents for s in skip)):
                continue
            out = tree / path.relative_to(root)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
            out.chmod(0o644)


def _elf_machine(path: Path) -> int | None:
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        return None
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def _requires(dist_info: Path) -> list[str]:
    meta = Parser().parsestr((dist_info / "METADATA").read_text(errors="replace"))
    return meta.get_all("Requires-Dist") or []


def missing_requirements(tree: Path, python_version: str, machine: str) -> list[str]:
    """Requirements of the installed distributions that no distribution in ``tree``
    provides (markers evaluated for the target; extras ignored): the pins must be closed."""
    from packaging.requirements import Requirement

    env = {"python_version": python_version, "python_full_version": python_version + ".0",
           "platform_machine": machine, "sys_platform": "linux", "platform_system": "Linux",
           "os_name": "posix", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "extra": ""}
    dists = {normalize(p.name.split("-", 1)[0]): p for p in tree.glob("*.dist-info")}
    out = []
    for name, info in sorted(dists.items()):
        for raw in _requires(info):
            req = Requirement(raw)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            if normalize(req.name) not in dists:
                out.append(f"{name} needs {req}")
    return out


def check(tree: Path, artifact: Artifact, target: Target) -> list[str]:
    """What is wrong with the tree: a forbidden package, a handler module missing, a native
    library for another machine, a requirement the pins leave out."""
    problems = [f"forbidden package in the artifact: {name}"
                for name in artifact.forbidden
                if (tree / name).exists() or (tree / f"{name}.py").exists()]
    for handler in artifact.handlers:
        module, _, function = handler.rpartition(".")
        path = tree.joinpath(*module.split("."))
        source = path.with_suffix(".py")
        if not source.is_file():
            problems.append(f"handler {handler}: no {source.relative_to(tree)}")
        elif f"def {function}(" not in source.read_text():
            problems.append(f"handler {handler}: {function} not defined in its module")
    if target.elf_machine is not None:
        problems += [f"{p.relative_to(tree)}: native code for machine {m}, not "
                     f"{target.elf_machine}"
                     for p in sorted(tree.rglob("*.so*")) if p.is_file()
                     for m in [_elf_machine(p)] if m is not None and m != target.elf_machine]
    machine = "aarch64" if target.elf_machine == 183 else os.uname().machine
    version = target.python_version or "{}.{}".format(*sys.version_info[:2])
    problems += missing_requirements(tree, version, machine)
    return problems


def write_zip(tree: Path, dest: Path) -> None:
    """A deterministic zip of ``tree``: sorted entries, fixed dates, 0644/0755 modes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in sorted(p for p in tree.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(tree).as_posix(), _ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            info.external_attr = (0o100000 | mode) << 16
            zf.writestr(info, path.read_bytes(), compresslevel=9)
    tmp.replace(dest)


@dataclass(frozen=True)
class Sizes:
    unzipped: int
    zipped: int
    #: unzipped bytes per top-level entry (package, module or dist-info), largest first
    by_package: list[tuple[str, int]]


def sizes(tree: Path, zip_path: Path) -> Sizes:
    per: Counter[str] = Counter()
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            top = info.filename.split("/", 1)[0]
            top = top.split("-", 1)[0] + " (metadata)" if top.endswith(".dist-info") else top
            per[top] += info.file_size
    return Sizes(sum(per.values()), zip_path.stat().st_size, per.most_common())


def container_definition(artifact: Artifact, tree: Path, dest: Path) -> Path:
    """A Dockerfile for the image form of an artifact too large for a zip (Lambda's
    ``python3.12`` arm64 base image, the tree in ``LAMBDA_TASK_ROOT``, the first handler)."""
    rel = os.path.relpath(tree, dest.parent)
    dest.write_text(
        "# built by `make package`: the artifact exceeds Lambda's 250 MB unzipped limit\n"
        "# docker build --platform linux/arm64 -t caa-" + artifact.name + " -f "
        + dest.name + " .\n"
        "FROM public.ecr.aws/lambda/python:3.12-arm64\n"
        f"COPY {rel}/ ${{LAMBDA_TASK_ROOT}}/\n"
        f'CMD ["{artifact.handlers[0]}"]\n')
    return dest
