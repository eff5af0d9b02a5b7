"""Regenerate fedml/core/comm/proto/fedml_pb2.py, fedml_pb2.pyi and fedml_pb2_grpc.py from fedml.proto.

Run from anywhere with grpcio-tools installed (the ``dev`` extra)::

    python scripts/generate_grpc.py [--out DIR]

The modules are written under ``DIR/fedml/core/comm/proto`` (``DIR`` defaults to the repository root),
so they import each other as ``fedml.core.comm.proto``. The grpcio-tools version decides which grpcio
and protobuf versions the generated code accepts at run time; keep the ``grpc`` extra in
pyproject.toml in step with it. A test checks that the committed modules match this script's output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = Path("fedml/core/comm/proto/fedml.proto")
"""The definition, relative to the repository root (its path is recorded in the generated code)."""


def generate(out: Path) -> None:
    """Write the generated modules under ``out``; raise ``RuntimeError`` if protoc fails."""
    from grpc_tools import protoc

    (out / PROTO.parent).mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {ROOT / PROTO}")


def main() -> int:
    """Parse the command line and regenerate."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT, help="root to write under (default: the repository)"
    )
    generate(parser.parse_args().out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
