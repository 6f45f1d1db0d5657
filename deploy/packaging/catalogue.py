"""What each Lambda artifact holds, what it is built for, and what never goes in.

One artifact per distinct code bundle; each names the template's handlers it serves (the
build refuses a function in ``deploy/template.yaml`` whose handler no artifact serves) and the
template parameter its S3 key goes to. Third-party code comes only from the pinned runtime
requirements (``deploy/lambda-requirements.txt``, every transitive package pinned, installed
with ``--no-deps``), as binary wheels for the target: Lambda's ``python3.12`` runtime on
``arm64`` (Amazon Linux 2023, glibc 2.34, so ``manylinux_2_28`` wheels run there).

boto3/botocore are bundled although the runtime has them: aiobotocore pins botocore to a
window of three patch releases (``botocore<1.43.118,>=1.43.115`` for aiobotocore 3.10.0)
and patches its internals, so the runtime's botocore (whatever AWS ships that month) would
break the async clients; bundling also keeps the version the one tested here. Its service
models are cut to :data:`BOTOCORE_SERVICES` (18.6 of its 20.6 MB are models).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "template.yaml"
REQUIREMENTS = ROOT / "deploy" / "lambda-requirements.txt"
#: the API function's: the same pins and the ASGI stack (fastapi, starlette, mangum), no uvicorn
API_REQUIREMENTS = ROOT / "deploy" / "lambda-api-requirements.txt"
#: the artifacts (zip, unpacked tree, container definition when a zip cannot fit)
OUT = ROOT / "build" / "lambda"
#: downloaded wheels, kept between builds (pip skips a wheel already there)
WHEELS = ROOT / "build" / "wheels"

#: Lambda's limit on a function's unzipped code (layers included); beyond it, an image
ZIP_LIMIT_BYTES = 250 * 1024 * 1024


@dataclass(frozen=True)
class Target:
    """A platform to build for: pip's ``--platform`` tags, Python version, ELF machine."""

    name: str
    platforms: tuple[str, ...]
    python_version: str
    #: ELF ``e_machine`` of every native library in the artifact (183 aarch64, 62 x86-64)
    elf_machine: int | None

    def pip_args(self) -> list[str]:
        """pip's arguments choosing binary wheels for this target (none: the host's)."""
        if not self.platforms:
            return ["--only-binary=:all:"]
        args = ["--only-binary=:all:", "--implementation", "cp",
                "--python-version", self.python_version]
        for tag in self.platforms:
            args += ["--platform", tag]
        return args


LAMBDA_ARM64 = Target("lambda-arm64-py312", ("manylinux_2_28_aarch64", "manylinux2014_aarch64"),
                      "3.12", 183)
#: the machine running the build: the smoke check imports the handler from a tree built for it
HOST = Target("host", (), "", None)

#: what the Lambda handlers import (the rest of the requirements file is their dependencies);
#: ``python -m deploy.package --lock`` pins these to this environment's versions
RUNTIME = ("aiobotocore", "aws-kinesis-agg", "aws-lambda-powertools", "boto3", "iso4217",
           "numpy", "pydantic", "pydantic-settings", "river", "scipy", "tenacity")

#: never in an artifact (import names): demo and report (pandas, scikit-learn, matplotlib,
#: lifetimes), the developer tools, the local-only code (moto, localstack_client, the CLI's
#: typer/rich, the KCL jars)
FORBIDDEN = ("pandas", "sklearn", "matplotlib", "lifetimes", "moto", "localstack_client",
             "pytest", "_pytest", "hypothesis", "ruff", "mypy", "cfnlint", "schemathesis",
             "mypy_boto3_kinesis", "mypy_boto3_dynamodb", "boto3_stubs", "typer", "rich",
             "amazon_kclpy", "kclpy_ext", "uvicorn", "pip", "setuptools", "wheel")

#: the service models kept in botocore/data: every service the code builds a client for
#: (tests/unit/deploy/test_package.py checks the sources against this list) and the ones
#: the template's functions are allowed to call
BOTOCORE_SERVICES = ("kinesis", "dynamodb", "dynamodbstreams", "sts", "sso", "sso-oidc",
                     "cloudwatch", "logs", "s3", "sqs", "bedrock", "bedrock-runtime", "ssm",
                     "secretsmanager", "scheduler", "lambda", "events")

#: scipy subpackages no handler imports (``scipy.optimize``, ``special``, ``linalg``,
#: ``sparse``, ``spatial``, ``fft``, ``constants`` and ``_lib`` stay); `make package`'s smoke
#: check imports the handler and fits both purchase models from the pruned tree
SCIPY_UNUSED = ("stats", "io", "signal", "interpolate", "integrate", "ndimage", "cluster",
                "fftpack", "odr", "datasets", "misc", "differentiate")

#: directories and suffixes dropped from every tree: tests, caches, sources, headers, stubs
PRUNED_DIRS = frozenset({"tests", "__pycache__"})
PRUNED_SUFFIXES = (".pyi", ".pyx", ".pxd", ".pxi", ".c", ".cpp", ".h", ".hpp", ".f", ".f90",
                   ".a", ".pyc")


@dataclass(frozen=True)
class Artifact:
    """One zip: our packages (minus ``source_excluded``) over the pinned requirements."""

    name: str
    #: the template's ``Handler`` values this code serves
    handlers: tuple[str, ...]
    #: the template parameter that receives the zip's S3 key (``make deploy``)
    code_key_parameter: str
    requirements: Path = REQUIREMENTS
    packages: tuple[str, ...] = ("caa", "consumers", "deploy", "models", "producers")
    #: paths (relative to the repository) left out: the CLI, the report, the API (its own
    #: artifact when deployed), the local emulators and the build tooling
    source_excluded: tuple[str, ...] = ("caa/cli", "caa/report", "caa/api", "deploy/local",
                                        "deploy/packaging", "deploy/package.py",
                                        "deploy/stack.py", "deploy/kcl.py")
    forbidden: tuple[str, ...] = (*FORBIDDEN, "fastapi", "starlette")
    #: package -> its subpackages removed after unpacking
    pruned_subpackages: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {"scipy": SCIPY_UNUSED})

    @property
    def zip_name(self) -> str:
        return f"caa-{self.name}.zip"


CONSUMER = Artifact(
    name="consumer",
    handlers=("caa.entry.lambda_stream.handler", "caa.entry.analyzer_lambda.handler",
              "caa.entry.refit_lambda.handler", "caa.entry.batch_lambda.handler"),
    code_key_parameter="CodeKey",
)
#: the HTTP API behind a function URL (caa.entry.api_lambda: FastAPI through Mangum)
API = Artifact(
    name="api",
    handlers=("caa.entry.api_lambda.handler",),
    code_key_parameter="ApiCodeKey",
    requirements=API_REQUIREMENTS,
    source_excluded=("caa/cli", "caa/report", "deploy/local", "deploy/packaging",
                     "deploy/package.py", "deploy/stack.py", "deploy/kcl.py"),
    forbidden=FORBIDDEN,
)
ARTIFACTS: tuple[Artifact, ...] = (CONSUMER, API)


def artifact_for(handler: str) -> Artifact | None:
    """The artifact serving ``handler``, if any."""
    return next((a for a in ARTIFACTS if handler in a.handlers), None)
