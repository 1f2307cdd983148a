"""Regenerate libs/hutch-proto from proto/ (run by `make proto`; CI checks the result matches)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
OUT = ROOT / "libs" / "hutch-proto" / "src"
# Top-level folders under OUT/hutch that are generated; "hutch" itself stays a namespace shared
# with the SDK, core and testing distributions.
GENERATED = ("v1", "internal", "events")


def main() -> int:
    for name in GENERATED:
        shutil.rmtree(OUT / "hutch" / name, ignore_errors=True)
    protos = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--mypy_out=quiet:{OUT}",
        f"--mypy_grpc_out=quiet:{OUT}",
        *protos,
    ]
    subprocess.run(cmd, check=True, cwd=PROTO)
    for name in GENERATED:
        top = OUT / "hutch" / name
        for folder in [top, *(p for p in top.rglob("*") if p.is_dir())]:
            (folder / "__init__.py").write_text("")
    (OUT / "hutch" / "py.typed").write_text("")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
