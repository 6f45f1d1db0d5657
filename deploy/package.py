"""`make package`: every Lambda artifact of deploy/template.yaml, built for arm64 / Python 3.12.

    python -m deploy.package            build build/lambda/caa-<name>.zip, print the sizes
    python -m deploy.package --smoke    also build the same tree for this machine and import
                                        each handler from it, isolated, and fit both models
    python -m deploy.package --lock     re-pin deploy/lambda-requirements.txt to this
                                        environment's versions of catalogue.RUNTIME

Exit status 1 when a template function has no artifact, an artifact has a problem
(:func:`deploy.packaging.build.check`) or the smoke check fails. What goes in and why:
:mod:`deploy.packaging.catalogue`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deploy.packaging import build, catalogue
from deploy.packaging import template as cfn
from deploy.packaging.catalogue import ARTIFACTS, Artifact, Target

MB = 1_000_000


@dataclass(frozen=True)
class Built:
    artifact: Artifact
    zip_path: Path
    tree: Path
    sizes: build.Sizes
    problems: list[str]
    container: Path | None


def unserved(template: Path = catalogue.TEMPLATE) -> list[str]:
    """Template functions whose handler no artifact serves, or built otherwise than ours."""
    out = []
    for fn in cfn.functions(cfn.load(template)):
        if fn.image:
            continue
        if fn.handler is None or catalogue.artifact_for(fn.handler) is None:
            out.append(f"{fn.logical_id}: handler {fn.handler} is in no artifact "
                       "(add it to deploy/packaging/catalogue.py)")
        elif fn.runtime != "python3.12" or fn.architectures != ("arm64",):
            out.append(f"{fn.logical_id}: {fn.runtime} {'/'.join(fn.architectures)}, but the "
                       "artifacts are built for python3.12 arm64")
    return out


def build_one(artifact: Artifact, target: Target, out: Path, wheels: Path,
              root: Path = catalogue.ROOT) -> Built:
    """Fetch, unpack, prune, add our source, check and zip one artifact."""
    tree = out / artifact.name
    if tree.exists():
        shutil.rmtree(tree)
    wheel_files = build.fetch(artifact.requirements, target, wheels)
    build.unpack(wheel_files, tree)
    build.prune(tree, artifact.pruned_subpackages)
    # not stripped: strip (GNU or LLVM) breaks the libraries auditwheel patched ("ELF load
    # command address/offset not page-aligned", seen by the smoke check), and those hold most
    # of the unstripped bytes (both OpenBLAS builds)
    build.add_source(root, tree, artifact.packages, artifact.source_excluded)
    problems = build.check(tree, artifact, target)
    zip_path = out / artifact.zip_name
    build.write_zip(tree, zip_path)
    sizes = build.sizes(tree, zip_path)
    dockerfile = out / f"{artifact.name}.Dockerfile"
    container = None
    if sizes.unzipped > catalogue.ZIP_LIMIT_BYTES:
        container = build.container_definition(artifact, tree, dockerfile)
    else:
        dockerfile.unlink(missing_ok=True)  # from an earlier, larger build
    return Built(artifact, zip_path, tree, sizes, problems, container)


def report(built: Built, say: Callable[[str], None] = print) -> None:
    s = built.sizes
    say(f"{built.artifact.name}: {built.zip_path}")
    say(f"  handlers: {', '.join(built.artifact.handlers)}")
    say(f"  unzipped {s.unzipped / MB:.1f} MB, zipped {s.zipped / MB:.1f} MB "
        f"(Lambda: 250 MB unzipped for a zip; aim: under 100 MB)")
    say("  largest: " + ", ".join(f"{name} {size / MB:.1f}" for name, size in s.by_package[:8]))
    if built.container:
        say(f"  too large for a zip: image definition {built.container}")
    for problem in built.problems:
        say(f"  PROBLEM: {problem}")


#: run in an isolated interpreter with only the artifact's tree (and the standard library)
#: on sys.path: the handler imports, and both purchase models fit with the pruned scipy
_SMOKE = """
import importlib, sys
sys.path[:0] = [sys.argv[1]]
for handler in sys.argv[2:]:
    module, _, name = handler.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name)), handler
from models.learn import bgnbd, pareto_nbd
x, t_x, T = [0, 1, 2, 5, 0, 3], [0.0, 10.0, 20.0, 30.0, 0.0, 12.0], [40.0] * 6
print("bgnbd", bgnbd.fit(x, t_x, T, max_iter=50))
print("pareto_nbd", pareto_nbd.fit(x, t_x, T, max_iter=50))
bad = [m for m in ("pandas", "sklearn", "matplotlib", "moto", "localstack_client")
       if m in sys.modules]
assert not bad, bad
"""


def smoke(artifact: Artifact, out: Path, wheels: Path) -> list[str]:
    """Build ``artifact`` for this machine the same way and import its handlers from it."""
    built = build_one(artifact, catalogue.HOST, out, wheels)
    done = subprocess.run([sys.executable, "-I", "-S", "-c", _SMOKE, str(built.tree.resolve()),
                           *artifact.handlers], capture_output=True, text=True, check=False,
                          cwd=tempfile.gettempdir())
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return [f"smoke check of {artifact.name} ({built.tree}): {last}"]
    return [f"smoke check of {artifact.name}: {p}" for p in built.problems]


def lock(requirements: Path = catalogue.REQUIREMENTS,
         target: Target = catalogue.LAMBDA_ARM64) -> list[str]:
    """Pin catalogue.RUNTIME at this environment's versions and every dependency pip
    resolves for ``target``; writes ``requirements``; returns the pins."""
    top = [f"{name}=={importlib.metadata.version(name)}" for name in catalogue.RUNTIME]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet",
                        "--disable-pip-version-check", *target.pip_args(), "--dest", tmp, *top],
                       check=True)
        found = sorted(build.wheel_name_version(p) for p in Path(tmp).glob("*.whl"))
    direct = {build.normalize(n) for n in catalogue.RUNTIME}
    lines = [f"{n}=={v}" + ("" if n in direct else "  # dependency") for n, v in found]
    requirements.write_text(
        "# The Lambda artifacts' third-party code, every package pinned (installed with\n"
        "# --no-deps, so nothing else comes in). Direct: deploy/packaging/catalogue.py RUNTIME.\n"
        "# Regenerate: .venv/bin/python -m deploy.package --lock (binary wheels for\n"
        f"# {', '.join(target.platforms)}, CPython {target.python_version}).\n"
        + "\n".join(lines) + "\n")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.package", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=catalogue.OUT)
    ap.add_argument("--wheels", type=Path, default=catalogue.WHEELS)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--lock", action="store_true")
    args = ap.parse_args(argv)
    if args.lock:
        print("\n".join(lock()))
        return 0
    problems = unserved()
    target = catalogue.LAMBDA_ARM64
    for artifact in ARTIFACTS:
        built = build_one(artifact, target, args.out, args.wheels / target.name)
        report(built)
        problems += built.problems
        if args.smoke:
            host = catalogue.HOST
            found = smoke(artifact, args.out.parent / "lambda-host", args.wheels / host.name)
            print(f"  smoke check ({host.name} build of the same tree): "
                  + ("FAILED" if found else "the handlers import, both models fit"))
            problems += found
    for problem in problems:
        print(f"package: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
