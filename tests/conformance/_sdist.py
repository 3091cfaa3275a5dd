"""An sdist of a project's exact version, fetched for its tests (the suites of uvloop and
aiohttp are not in their wheels).

From PyPI's simple index in its JSON form (PEP 691; what pip reads too, where the project
JSON API may not be served), checked against the sha256 the index gives: ``pip download --no-binary :all:``
prepares the sdist's metadata by building it, which for uvloop (its build configures libuv)
took 4-6 minutes of CPU on a 2-core machine and overran a 300 s timeout under load. pip is
the fallback where the API cannot be reached (an index configured only for pip)."""

import hashlib
import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import urllib.parse
import urllib.request

SIMPLE = "https://pypi.org/simple"
CA_FILES = ("/etc/ssl/certs/ca-certificates.crt",)  # the system's, as pip is configured with


def _context():
    for cafile in (os.environ.get("SSL_CERT_FILE"), os.environ.get("PIP_CERT"), *CA_FILES):
        if cafile and os.path.isfile(cafile):
            return ssl.create_default_context(cafile=cafile)
    return ssl.create_default_context()


def _normalized(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _from_pypi(project, version, dest):
    ctx = _context()
    request = urllib.request.Request(f"{SIMPLE}/{_normalized(project)}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60, context=ctx) as r:
        index = json.load(r)
    sdist = next((f for f in index["files"] if f["filename"].endswith(".tar.gz")
                  and f["filename"][:-len(".tar.gz")].rpartition("-")[2] == version
                  and _normalized(f["filename"][:-len(".tar.gz")].rpartition("-")[0])
                  == _normalized(project)), None)
    if sdist is None or "sha256" not in sdist.get("hashes", {}):
        raise LookupError(f"PyPI's index lists no sdist with a sha256 for {project} {version}")
    path = os.path.join(dest, sdist["filename"])
    partial = path + ".part"  # renamed once its sha256 is checked: pip never sees a bad file
    url = urllib.parse.urljoin(request.full_url, sdist["url"])  # PEP 691 allows relative ones
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=300, context=ctx) as r, open(partial, "wb") as f:
            for block in iter(lambda: r.read(1 << 16), b""):
                digest.update(block)
                f.write(block)
        if digest.hexdigest() != sdist["hashes"]["sha256"]:
            raise ValueError(f"{sdist['filename']}: sha256 is not the one PyPI's index gives")
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return path


def _with_pip(project, version, dest, timeout):
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
           "--no-deps", f"{project}=={version}", "-d", dest]
    try:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"could not fetch {project} {version}'s sdist in {timeout} s "
                         f"({' '.join(cmd)})") from None
    sdists = [f for f in os.listdir(dest) if f.endswith(".tar.gz")]
    if done.returncode != 0 or not sdists:
        raise SystemExit(f"could not fetch {project} {version}'s sdist ({' '.join(cmd)}):\n"
                         f"{done.stdout[-2000:]}")
    return os.path.join(dest, sdists[0])


def fetch_sdist(project, version, dest, *, pip_timeout=900):
    """The path of PROJECT==VERSION's sdist (.tar.gz), downloaded into the directory dest."""
    try:
        return _from_pypi(project, version, dest)
    except (OSError, ValueError, LookupError, KeyError, http.client.HTTPException) as exc:
        print(f"PyPI's index: {exc}; trying pip download", file=sys.stderr)
    return _with_pip(project, version, dest, pip_timeout)
