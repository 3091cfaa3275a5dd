"""Compiling the small C programs some benchmarks measure against (their floors, a load
generator).

The C sources are installed next to the benchmark that uses them (braid/bench/loop_c/,
braid/bench/procpool_c/) and compiled at run time with ``cc -O2`` (or $CC); the executables
are cached under ~/.cache/braid/<cache name>/, keyed by the source, the flags and the
compiler's path, so a benchmark compiles only the first time or after a change.
"""

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile

FLAGS = ["-O2"]


class NoCompiler(Exception):
    """No C compiler, or a C program does not build; the message says which and why."""


def compiler(needed_for="this case"):
    """The C compiler command (a list), from $CC or `cc`; NoCompiler if there is none."""
    cc = shlex.split(os.environ.get("CC") or "cc")
    if not cc or shutil.which(cc[0]) is None:
        raise NoCompiler(f"no C compiler: `{cc[0] if cc else 'cc'}` not found; {needed_for} "
                         f"needs one (apt-get install gcc, or set CC)")
    return cc


def compiler_version(cc):
    try:
        out = subprocess.run(cc + ["--version"], capture_output=True, text=True, timeout=30)
        return (out.stdout.splitlines() or ["unknown"])[0].strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cache_dir(name):
    """(a writable directory for the executables, whether it is a temporary one)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "braid", name)
    try:
        os.makedirs(path, exist_ok=True)
        if os.access(path, os.W_OK | os.X_OK):
            return path, False
    except OSError:
        pass
    return tempfile.mkdtemp(prefix=f"braid-{name}-"), True


def build(cc, source_dir, sources, cache_name):
    """{name: path of the executable} for sources ({name: file in source_dir}), plus "cache"
    (the directory) and "temporary" (whether it is a temporary one); NoCompiler says why not."""
    cache, temporary = cache_dir(cache_name)
    out = {}
    for name, src_name in sources.items():
        src = os.path.join(source_dir, src_name)
        try:
            with open(src, "rb") as f:
                text = f.read()
        except OSError as exc:
            raise NoCompiler(f"missing C source {src}: {exc}") from exc
        key = hashlib.sha256(text + b"\0" + " ".join(cc + FLAGS).encode()
                             + b"\0" + (shutil.which(cc[0]) or "").encode()).hexdigest()[:16]
        exe = os.path.join(cache, f"{name}-{key}")
        if not os.access(exe, os.X_OK):
            tmp = os.path.join(cache, f".{name}-{key}.{os.getpid()}")
            try:
                res = subprocess.run(cc + FLAGS + ["-o", tmp, src], capture_output=True,
                                     text=True, timeout=300)
            except (OSError, subprocess.SubprocessError) as exc:
                raise NoCompiler(f"{' '.join(cc)} failed on {src}: {exc}") from exc
            if res.returncode != 0:
                tail = " | ".join((res.stderr or res.stdout).strip().splitlines()[-5:])
                raise NoCompiler(f"{' '.join(cc + FLAGS)} {src} failed "
                                 f"(status {res.returncode}): {tail}")
            os.replace(tmp, exe)
        out[name] = exe
    out["cache"] = cache
    out["temporary"] = temporary
    return out
