"""A pytest plugin that runs another project's asyncio tests on braid.Loop.

``BRAID_LOOP=1 python -m pytest -p braid_pytest_plugin ...`` (this directory on PYTHONPATH)
installs braid's event loop policy before any test, so every loop made through the policy
(``asyncio.run``, ``asyncio.Runner``, ``IsolatedAsyncioTestCase``, ``new_event_loop``) is a
``braid.Loop``; without ``BRAID_LOOP=1`` nothing changes, for the baseline run with the same
command. The report's header names the loop a new event loop is, so a run says what it ran on.
Used by hand for websockets' and anyio's suites (docs/CONFORMANCE.md).
"""

import asyncio
import os

if os.environ.get("BRAID_LOOP") == "1":
    import braid

    braid.install()
    if not type(asyncio.get_event_loop_policy()).__module__.startswith("braid"):
        raise RuntimeError(f"braid.install() did not take: {asyncio.get_event_loop_policy()!r}")


def pytest_report_header(config):
    loop = asyncio.new_event_loop()
    try:
        return f"event loop: {type(loop).__module__}.{type(loop).__qualname__}"
    finally:
        loop.close()
