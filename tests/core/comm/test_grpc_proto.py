"""The committed gRPC modules are exactly what ``scripts/generate_grpc.py`` makes from ``fedml.proto``."""

from pathlib import Path

import pytest

from ...conftest import ROOT, run_python

GENERATED = ("fedml_pb2.py", "fedml_pb2.pyi", "fedml_pb2_grpc.py")
PROTO_DIR = Path("fedml/core/comm/proto")


def test_committed_modules_match_a_fresh_generation(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")

    result = run_python(str(ROOT / "scripts/generate_grpc.py"), "--out", str(tmp_path), timeout=60)

    assert result.returncode == 0, result.stderr
    for name in GENERATED:
        fresh = (tmp_path / PROTO_DIR / name).read_bytes()
        assert fresh == (ROOT / PROTO_DIR / name).read_bytes(), (
            f"{name} is stale: run scripts/generate_grpc.py"
        )


def test_generated_chunk_has_the_wire_fields() -> None:
    pytest.importorskip("grpc")
    from fedml.core.comm.proto import fedml_pb2

    chunk = fedml_pb2.Chunk(message_id=b"i" * 16, index=1, count=2, total=3, sha256=b"d" * 32, data=b"xyz")

    assert fedml_pb2.Chunk.FromString(chunk.SerializeToString()) == chunk
    assert [f.name for f in fedml_pb2.Chunk.DESCRIPTOR.fields] == [
        "message_id",
        "index",
        "count",
        "total",
        "sha256",
        "data",
    ]
