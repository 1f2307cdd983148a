"""The supervisor's private runtime: a Python that runs in any sandbox image, even one without Python.

`build_runtime()` assembles, on the host, a directory that is bind-mounted read-only at
MOUNT_POINT in every sandbox:

    bin/python3                     the host's interpreter binary
    lib/ld-linux-*.so.*, lib/*.so*  the dynamic loader and every shared library the interpreter and
                                    the extension modules below link to
    lib/python3.11/...              exactly the standard-library modules the supervisor imports
                                    (plus `encodings`, which the interpreter needs to start)
    sandbox_supervisor.py, protocol.py
    sandbox_supervisor.pyc          what actually runs: the supervisor compiled ahead

Everything is compiled to bytecode at build time, so a sandbox start compiles nothing: running the
supervisor's source as a script would compile it on every start (about 10 ms, a third of the time
to a listening supervisor). The source stays next to the bytecode for tracebacks.

The supervisor is started through the bundled loader with --library-path, so neither the image's
libraries nor its Python (if any) are ever used, and with PYTHONHOME pointing at the bundle, so the
interpreter reads nothing from the host's Python install either.

Builds are cached under `cache_dir/<key>`, the key hashing the interpreter, the supervisor's
sources and this builder; a build happens in a temporary directory renamed into place, so concurrent builders are
safe and a half-built runtime is never used.
"""

from __future__ import annotations

import compileall
import hashlib
import logging
import py_compile
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

log = logging.getLogger(__name__)

MOUNT_POINT = "/.hutch/rt"
SUPERVISOR_DIR = Path(__file__).resolve().parent
SUPERVISOR_FILES = ("sandbox_supervisor.py", "protocol.py", "gvisor_compat.c")
# Preloaded into gVisor sandboxes' processes (see gvisor_compat.c); built when a C compiler is there.
GVISOR_COMPAT = "lib/hutch-gvisor-compat.so"
SUPERVISOR_BYTECODE = "sandbox_supervisor.pyc"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Where an interpreter whose PYTHONHOME is the bundle looks for its standard library.
STDLIB_DIR = Path(sys.platlibdir) / f"python{sys.version_info.major}.{sys.version_info.minor}"

# Run by the host interpreter, isolated from the environment, user site and current directory:
# imports the supervisor, prints the stdlib directory, then the file behind every loaded module.
_DISCOVER_IMPORTS = """
import os, sys
sys.path.insert(0, sys.argv[1])
import sandbox_supervisor
for name in sandbox_supervisor.ON_DEMAND_MODULES:
    __import__(name)
print(os.path.dirname(os.__file__))
for module in list(sys.modules.values()):
    print(getattr(module, "__file__", None) or "")
"""
# `ldd` lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)".
_LDD_LIBRARY = re.compile(r"^\s*(\S+)\s+=>\s+(/\S+)")
_LDD_LOADER = re.compile(r"^\s*(/\S*ld-\S+)\s+\(")


class BundleError(Exception):
    """The host cannot provide what the supervisor's runtime needs."""


@dataclass(frozen=True)
class SupervisorRuntime:
    """A built runtime: `host_dir` is bind-mounted read-only at MOUNT_POINT inside the sandbox."""

    host_dir: Path
    loader: str

    MOUNT_POINT: ClassVar[str] = MOUNT_POINT

    def argv(self) -> list[str]:
        """The supervisor's command line inside the sandbox.

        The loader is invoked explicitly so that the image's own loader and libraries never matter.
        """
        return [
            f"{MOUNT_POINT}/lib/{self.loader}",
            "--library-path",
            f"{MOUNT_POINT}/lib",
            f"{MOUNT_POINT}/bin/python3",
            "-S",
            "-s",
            "-B",
            "-u",
            f"{MOUNT_POINT}/{SUPERVISOR_BYTECODE}",
        ]

    def env(self, socket_path: str, default_user: str) -> list[str]:
        """The supervisor's environment; the processes it starts never see it."""
        return [
            f"PYTHONHOME={MOUNT_POINT}",
            "PYTHONDONTWRITEBYTECODE=1",
            # File names and messages are UTF-8 whatever locale the image has (or lacks).
            "PYTHONUTF8=1",
            f"PATH={SANDBOX_PATH}",
            f"HUTCH_SUPERVISOR_SOCKET={socket_path}",
            f"HUTCH_DEFAULT_USER={default_user}",
        ]

    def gvisor_preload(self) -> str | None:
        """The LD_PRELOAD value for processes of gVisor sandboxes, or None when it was not built."""
        return f"{MOUNT_POINT}/{GVISOR_COMPAT}" if (self.host_dir / GVISOR_COMPAT).is_file() else None


def build_runtime(cache_dir: Path) -> SupervisorRuntime:
    """Returns the runtime for this host's Python and the current supervisor, building it if needed."""
    interpreter = _host_interpreter()
    target = cache_dir / _runtime_key(interpreter)
    if not target.is_dir():
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
        try:
            _assemble(staging, interpreter)
            _move_into_place(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return SupervisorRuntime(host_dir=target, loader=_find_loader(target / "lib"))


def _host_interpreter() -> Path:
    """The real interpreter binary, not a virtualenv's link to it."""
    executable = getattr(sys, "_base_executable", None) or sys.executable
    if not executable:
        raise BundleError("cannot tell which Python binary is running")
    return Path(executable).resolve()


def _runtime_key(interpreter: Path) -> str:
    digest = hashlib.sha256()
    digest.update(f"{sys.version}\0{interpreter}\0".encode())
    for name in (*SUPERVISOR_FILES, Path(__file__).name):
        digest.update((SUPERVISOR_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


def _move_into_place(staging: Path, target: Path) -> None:
    try:
        staging.rename(target)
    except OSError:
        if not target.is_dir():  # another builder finishing first is fine; anything else is not
            raise


def _assemble(root: Path, interpreter: Path) -> None:
    root.chmod(0o755)  # mkdtemp makes it 0700
    stdlib_files, stdlib_dir = _supervisor_modules(interpreter)
    (root / "bin").mkdir()
    (root / "lib").mkdir()
    (root / STDLIB_DIR / "lib-dynload").mkdir(parents=True, exist_ok=True)
    shutil.copy2(interpreter, root / "bin" / "python3")
    for source in stdlib_files | _startup_files(stdlib_dir):
        destination = root / STDLIB_DIR / source.relative_to(stdlib_dir)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    extensions = [path for path in stdlib_files if path.suffix == ".so"]
    for name, source in _shared_libraries([interpreter, *extensions]).items():
        shutil.copy2(source, root / "lib" / name)
    for name in SUPERVISOR_FILES:
        if name.endswith(".py"):
            shutil.copy2(SUPERVISOR_DIR / name, root / name)
    _compile(root)
    _build_gvisor_compat(root)


def _build_gvisor_compat(root: Path) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler: gVisor sandboxes will lack the statx fix (`ls -l` fails in them)")
        return
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-nostdlib", "-o", str(root / GVISOR_COMPAT),
         str(SUPERVISOR_DIR / "gvisor_compat.c")],
        check=True, capture_output=True,
    )  # fmt: skip


def _compile(root: Path) -> None:
    """Compiles the bundle's Python files to bytecode, named as they are seen inside the sandbox.

    Unchecked-hash bytecode is used without comparing it to its source, so a start neither stats
    sources nor compiles anything.
    """
    unchecked = py_compile.PycInvalidationMode.UNCHECKED_HASH
    stdlib_ok = compileall.compile_dir(
        root / STDLIB_DIR, ddir=f"{MOUNT_POINT}/{STDLIB_DIR}", quiet=1, invalidation_mode=unchecked
    )
    protocol_ok = compileall.compile_file(root / "protocol.py", ddir=MOUNT_POINT, quiet=1, invalidation_mode=unchecked)
    if not (stdlib_ok and protocol_ok):
        raise BundleError(f"compiling the supervisor's runtime in {root} failed")
    py_compile.compile(
        str(root / "sandbox_supervisor.py"),
        cfile=str(root / SUPERVISOR_BYTECODE),
        dfile=f"{MOUNT_POINT}/sandbox_supervisor.py",
        doraise=True,
        invalidation_mode=unchecked,
    )


def _supervisor_modules(interpreter: Path) -> tuple[set[Path], Path]:
    """The stdlib files (sources and extension modules) that importing the supervisor loads."""
    result = subprocess.run(
        [str(interpreter), "-I", "-S", "-B", "-X", "utf8", "-c", _DISCOVER_IMPORTS, str(SUPERVISOR_DIR)],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": SANDBOX_PATH},
    )
    if result.returncode != 0:
        raise BundleError(f"importing the supervisor with {interpreter} failed: {result.stderr.strip()}")
    stdlib_line, *module_lines = result.stdout.splitlines()
    stdlib_dir = Path(stdlib_line)
    files = {Path(line) for line in module_lines if line}
    return {path for path in files if path.is_relative_to(stdlib_dir)}, stdlib_dir


def _startup_files(stdlib_dir: Path) -> set[Path]:
    """What the interpreter needs before any import of ours: os.py (the stdlib landmark it looks for)
    and the whole `encodings` package (which codecs it loads depends on the environment).
    """
    return {stdlib_dir / "os.py", *(stdlib_dir / "encodings").glob("*.py")}


def _shared_libraries(binaries: list[Path]) -> dict[str, Path]:
    """Every shared library (and the loader) the binaries need, by the name they are loaded under."""
    libraries: dict[str, Path] = {}
    for binary in binaries:
        try:
            result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise BundleError("ldd is needed to find the interpreter's shared libraries") from None
        if result.returncode != 0:
            raise BundleError(f"ldd {binary} failed: {(result.stdout + result.stderr).strip()}")
        for line in result.stdout.splitlines():
            if match := _LDD_LIBRARY.match(line):
                libraries[match[1]] = Path(match[2]).resolve()
            elif match := _LDD_LOADER.match(line):
                libraries[Path(match[1]).name] = Path(match[1]).resolve()
    return libraries


def _find_loader(lib_dir: Path) -> str:
    loaders = sorted(path.name for path in lib_dir.glob("ld-*.so*"))
    if not loaders:
        raise BundleError(f"no dynamic loader in {lib_dir}: the host's Python must be dynamically linked")
    return loaders[0]
