"""`make package`: the packaging steps on small fixture wheels (fast), the pins and the catalogue
against the code and the template, and, with the package registry, that every pin resolves
to an arm64 / CPython 3.12 wheel and that a real aarch64 wheel passes the checks. The full
build (about 165 MB, half a minute) is left to `make package`."""

from __future__ import annotations

import ast
import json
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from deploy import package
from deploy.packaging import build, catalogue
from deploy.packaging import template as cfn
from deploy.packaging.catalogue import CONSUMER, LAMBDA_ARM64, Artifact

ROOT = Path(__file__).resolve().parents[3]
AARCH64, X86_64 = 183, 62


def _elf(machine: int) -> bytes:
    """The first 20 bytes of a little-endian 64-bit ELF shared object for ``machine``."""
    return b"\x7fELF\x02\x01\x01" + bytes(9) + (3).to_bytes(2, "little") \
        + machine.to_bytes(2, "little") + bytes(44)


def _wheel(where: Path, name: str, version: str, files: dict[str, bytes],
           requires: tuple[str, ...] = (), data: dict[str, bytes] | None = None) -> Path:
    dist = f"{name.replace('-', '_')}-{version}"
    path = where / f"{dist}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        for rel, body in files.items():
            zf.writestr(rel, body)
        for rel, body in (data or {}).items():
            zf.writestr(f"{dist}.data/{rel}", body)
        zf.writestr(f"{dist}.dist-info/METADATA", meta)
        zf.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\n")
    return path


@pytest.fixture
def fixture_wheels(tmp_path: Path) -> list[Path]:
    where = tmp_path / "wheels"
    where.mkdir()
    return [
        _wheel(where, "numlib", "1.0", {
            "numlib/__init__.py": b"X = 1\n",
            "numlib/__init__.pyi": b"X: int\n",
            "numlib/_core.cpython-312-aarch64-linux-gnu.so": _elf(AARCH64),
            "numlib/tests/test_x.py": b"assert True\n",
            "numlib/unused/__init__.py": b"",
            "numlib/src.pyx": b"",
        }, requires=("helper>=1", 'winonly; sys_platform == "win32"', "extra-dep; extra == 'x'")),
        _wheel(where, "helper", "2.0", {"helper.py": b"Y = 2\n"},
               data={"purelib/helper_data.py": b"Z = 3\n", "scripts/helper-cli": b"#!/bin/sh\n"}),
        _wheel(where, "botocore", "1.0", {
            "botocore/__init__.py": b"",
            "botocore/data/endpoints.json": b"{}",
            "botocore/data/kinesis/2013-12-02/service-2.json.gz": b"k",
            "botocore/data/ec2/2016-11-15/service-2.json.gz": b"e" * 1000,
        }),
    ]


@pytest.fixture
def source_root(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for rel, body in {"caa/__init__.py": "", "caa/entry/__init__.py": "",
                      "caa/entry/lambda_stream.py": "def handler(event, context=None):\n    pass\n",
                      "caa/cli/main.py": "import typer\n", "deploy/__init__.py": "",
                      "deploy/local/emulator.py": "import moto\n", "caa/py.typed": ""}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body)
    (root / "caa" / "__pycache__").mkdir()
    (root / "caa" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    return root


def _artifact(**kw: object) -> Artifact:
    base: dict[str, object] = {"name": "fixture", "handlers": ("caa.entry.lambda_stream.handler",),
                               "code_key_parameter": "CodeKey", "packages": ("caa", "deploy"),
                               "source_excluded": ("caa/cli", "deploy/local"),
                               "pruned_subpackages": {"numlib": ("unused",)}}
    return Artifact(**{**base, **kw})  # type: ignore[arg-type]


def _tree(tmp_path: Path, wheels: list[Path], root: Path, artifact: Artifact) -> Path:
    tree = tmp_path / "tree"
    build.unpack(wheels, tree)
    build.prune(tree, artifact.pruned_subpackages, botocore_services=("kinesis",))
    build.add_source(root, tree, artifact.packages, artifact.source_excluded)
    return tree


def test_a_fixture_artifact_holds_the_handler_and_nothing_local(
        tmp_path: Path, fixture_wheels: list[Path], source_root: Path) -> None:
    artifact = _artifact()
    tree = _tree(tmp_path, fixture_wheels, source_root, artifact)
    files = {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()}
    assert {"caa/entry/lambda_stream.py", "caa/py.typed", "numlib/__init__.py",
            "numlib/_core.cpython-312-aarch64-linux-gnu.so", "helper.py", "helper_data.py",
            "botocore/data/endpoints.json",
            "botocore/data/kinesis/2013-12-02/service-2.json.gz"} <= files
    # tests, stubs, sources, unused subpackages, other services' models, scripts, caches,
    # and the local-only code are gone
    assert not [f for f in files if "/tests/" in f or f.endswith((".pyi", ".pyx", ".pyc"))
                or f.startswith(("numlib/unused", "botocore/data/ec2", "caa/cli", "deploy/local"))
                or "helper-cli" in f or ".data/" in f]
    assert build.check(tree, artifact, LAMBDA_ARM64) == []


def test_the_checks_name_each_problem(tmp_path: Path, fixture_wheels: list[Path],
                                      source_root: Path) -> None:
    where = fixture_wheels[0].parent
    wheels = [fixture_wheels[0],  # helper (needed by numlib) left out
              _wheel(where, "pandas", "2.0", {"pandas/__init__.py": b""}),
              _wheel(where, "fastx", "1.0", {"fastx/_x.cpython-312-x86_64-linux-gnu.so":
                                             _elf(X86_64)})]
    artifact = _artifact(handlers=("caa.entry.lambda_stream.handler", "caa.entry.gone.handler",
                                   "caa.entry.lambda_stream.other"))
    problems = build.check(_tree(tmp_path, wheels, source_root, artifact), artifact, LAMBDA_ARM64)
    assert problems == [
        "forbidden package in the artifact: pandas",
        "handler caa.entry.gone.handler: no caa/entry/gone.py",
        "handler caa.entry.lambda_stream.other: other not defined in its module",
        "fastx/_x.cpython-312-x86_64-linux-gnu.so: native code for machine 62, not 183",
        "numlib needs helper>=1",
    ]


def test_the_zip_is_reproducible_and_its_sizes_are_counted(
        tmp_path: Path, fixture_wheels: list[Path], source_root: Path) -> None:
    tree = _tree(tmp_path, fixture_wheels, source_root, _artifact())
    first, second = tmp_path / "a.zip", tmp_path / "b.zip"
    build.write_zip(tree, first)
    (tree / "helper.py").touch()  # a new mtime changes nothing
    build.write_zip(tree, second)
    assert first.read_bytes() == second.read_bytes()
    sizes = build.sizes(tree, first)
    on_disk = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
    assert sizes.unzipped == on_disk and sizes.zipped == first.stat().st_size
    assert dict(sizes.by_package)["numlib"] == sum(
        p.stat().st_size for p in (tree / "numlib").rglob("*") if p.is_file())
    with zipfile.ZipFile(first) as zf:
        modes = {i.filename: (i.external_attr >> 16) & 0o777 for i in zf.infolist()}
    assert modes["caa/entry/lambda_stream.py"] == 0o644
    assert modes["numlib/_core.cpython-312-aarch64-linux-gnu.so"] == 0o755


def test_a_zip_too_large_gets_a_container_definition(tmp_path: Path) -> None:
    (tmp_path / "consumer").mkdir()
    dockerfile = build.container_definition(CONSUMER, tmp_path / "consumer",
                                            tmp_path / "consumer.Dockerfile")
    text = dockerfile.read_text()
    assert "FROM public.ecr.aws/lambda/python:3.12-arm64" in text
    assert "COPY consumer/ ${LAMBDA_TASK_ROOT}/" in text
    assert 'CMD ["caa.entry.lambda_stream.handler"]' in text


def test_only_exact_pins_are_accepted(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("# comment\nFoo_Bar==1.2.3  # why\n\nbaz==2.0.post1\n")
    assert build.pins(good) == {"foo-bar": "1.2.3", "baz": "2.0.post1"}
    for line in ("foo>=1", "foo", "-e .", "git+https://x/y", "foo==1.*"):
        bad = tmp_path / "bad.txt"
        bad.write_text(line + "\n")
        with pytest.raises(ValueError, match="not an exact pin"):
            build.pins(bad)


def test_the_requirements_are_the_runtime_ones_only() -> None:
    pins = build.pins(catalogue.REQUIREMENTS)
    assert {build.normalize(n) for n in catalogue.RUNTIME} <= set(pins)
    for name in ("pandas", "scikit-learn", "matplotlib", "lifetimes", "moto", "localstack-client",
                 "pytest", "ruff", "mypy", "hypothesis", "cfn-lint", "typer", "rich", "fastapi",
                 "uvicorn", "kclpy-ext", "boto3-stubs"):
        assert name not in pins, name


def test_every_template_function_has_an_artifact() -> None:
    assert package.unserved() == []
    handlers = [f.handler for f in cfn.functions(cfn.load(catalogue.TEMPLATE))]
    assert "caa.entry.lambda_stream.handler" in handlers
    template_parameters = cfn.load(catalogue.TEMPLATE)["Parameters"]
    for artifact in catalogue.ARTIFACTS:
        assert artifact.code_key_parameter in template_parameters
        for handler in artifact.handlers:
            module = ROOT.joinpath(*handler.rpartition(".")[0].split(".")).with_suffix(".py")
            assert module.is_file(), handler
            assert not any(module.is_relative_to(ROOT / e) for e in artifact.source_excluded)


def test_the_kept_service_models_cover_every_client_the_code_builds() -> None:
    used: set[str] = set()
    for package_dir in ("caa", "consumers", "producers", "models", "deploy"):
        for path in (ROOT / package_dir).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("client", "clients", "create_client")):
                    used |= {a.value for a in node.args
                             if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    assert {"kinesis", "dynamodb", "sts"} <= used
    assert used - set(catalogue.BOTOCORE_SERVICES) <= {"cloudformation"}  # deploy/stack.py


def test_the_handler_imports_nothing_of_the_demo_or_the_local_tools() -> None:
    code = ("import sys, caa.entry.lambda_stream; print(' '.join(sorted("
            "{m.split('.')[0] for m in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    imported = set(done.stdout.split())
    assert not imported & {"pandas", "sklearn", "matplotlib", "lifetimes", "moto",
                           "localstack_client", "typer", "fastapi", "pytest"}


# -- with the package registry ----------------------------------------------------------


def _registry_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
    except OSError:
        return False
    return True


needs_registry = pytest.mark.skipif(not _registry_reachable(),
                                    reason="the package registry (pypi.org) is not reachable")


@needs_registry
def test_every_pin_resolves_to_an_arm64_py312_wheel_and_the_pins_are_closed(
        tmp_path: Path) -> None:
    """pip resolves the pins for Lambda's platform with their dependencies (PEP 658
    metadata, no wheel downloaded): each is an aarch64 or pure wheel, and nothing beyond
    the pins comes in."""
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                    "--quiet", "--disable-pip-version-check", "--report", str(report),
                    *LAMBDA_ARM64.pip_args(), "-r", str(catalogue.REQUIREMENTS)],
                   check=True, capture_output=True)
    installs = json.loads(report.read_text())["install"]
    pins = build.pins(catalogue.REQUIREMENTS)
    resolved = {build.normalize(i["metadata"]["name"]): i["metadata"]["version"]
                for i in installs}
    assert resolved == pins
    for item in installs:
        wheel = item["download_info"]["url"].rsplit("/", 1)[1]
        assert wheel.endswith(".whl"), wheel
        tags = wheel[:-4].split("-")[-3:]
        assert tags[2] == "any" or "aarch64" in tags[2], wheel
        assert tags[0].startswith(("py3", "py2.py3", "cp312", "cp3")) and tags[1] in (
            "none", "cp312", "abi3"), wheel


@needs_registry
def test_real_aarch64_wheels_pass_the_checks(tmp_path: Path) -> None:
    """Two of the pins fetched for arm64 (a native and a pure one) through the build's own
    fetch step: the native library is aarch64 and the tree passes the checks."""
    pins = build.pins(catalogue.REQUIREMENTS)
    requirements = tmp_path / "req.txt"
    requirements.write_text("".join(f"{n}=={pins[n]}\n" for n in ("propcache", "iso4217")))
    wheels = build.fetch(requirements, LAMBDA_ARM64, tmp_path / "wheels")
    assert len(wheels) == 2
    tree = tmp_path / "tree"
    build.unpack(wheels, tree)
    build.prune(tree, {})
    natives = list(tree.rglob("*.so"))
    assert natives and all(build._elf_machine(p) == AARCH64 for p in natives)
    artifact = _artifact(handlers=(), packages=())
    assert build.check(tree, artifact, LAMBDA_ARM64) == []


def test_build_one_from_a_local_wheel_cache_prints_both_sizes(
        tmp_path: Path, fixture_wheels: list[Path], source_root: Path) -> None:
    """The whole build of one artifact, offline: the pinned wheels are already in the cache
    (pip is not called), the zip is written and both sizes printed."""
    requirements = tmp_path / "req.txt"
    requirements.write_text("numlib==1.0\nhelper==2.0\nbotocore==1.0\n")
    artifact = _artifact(requirements=requirements)
    built = package.build_one(artifact, LAMBDA_ARM64, tmp_path / "out",
                              fixture_wheels[0].parent, root=source_root)
    assert built.problems == [] and built.container is None
    assert built.zip_path == tmp_path / "out" / "caa-fixture.zip"
    lines: list[str] = []
    package.report(built, lines.append)
    assert lines[0] == f"fixture: {built.zip_path}"
    assert f"unzipped {built.sizes.unzipped / 1e6:.1f} MB, zipped " in lines[2]
    assert built.sizes.zipped == built.zip_path.stat().st_size
