# ======================================================================================================
# Local Hugging Face Hub (hub helper section). Keep it FIRST in this file: huggingface_hub reads
# HF_ENDPOINT, HF_HOME and HF_HUB_DISABLE_XET once, when it is first imported, and pytest imports this
# conftest before any test module. The server itself starts lazily, only when `hub_server` is used.
# ======================================================================================================
import atexit
import os
import shutil
import socket
import sys
import tempfile

import pytest


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# One intra-op thread in the test process and in every process it starts (they inherit the environment): the
# models here are tiny, and two threads per process on a 2-core machine, with two-process tests beside them, spend
# more CPU waiting for each other than computing. Set before torch is first imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

HUB_PORT = _free_loopback_port()
HUB_URL = f"http://127.0.0.1:{HUB_PORT}"
HF_HOME_DIR = tempfile.mkdtemp(prefix="hf_fairkd_tests_hf_home_")
atexit.register(shutil.rmtree, HF_HOME_DIR, ignore_errors=True)  # the session cache dies with it

if "huggingface_hub" in sys.modules:  # too late: the client would keep talking to its old endpoint
    raise RuntimeError(
        "huggingface_hub was imported before tests/conftest.py could point it at the local Hub; "
        "remove the early import (e.g. from a pytest plugin or sitecustomize) and rerun."
    )
# User settings that would bypass the isolated cache/endpoint or block the local server.
for _name in (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ASSETS_CACHE",
    "HF_XET_CACHE",
    "TRANSFORMERS_CACHE",
    "HF_DATASETS_CACHE",
    "HF_HUB_ENABLE_HF_TRANSFER",
):
    os.environ.pop(_name, None)
os.environ["HF_ENDPOINT"] = HUB_URL
os.environ["HF_HOME"] = HF_HOME_DIR
os.environ["HF_HUB_DISABLE_XET"] = "1"  # the server answers "regular" anyway; this keeps Xet out entirely
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_UPDATE_CHECK"] = "1"
for _name in ("NO_PROXY", "no_proxy"):  # never send loopback traffic through a proxy
    os.environ[_name] = ",".join(filter(None, [os.environ.get(_name), "127.0.0.1", "localhost"]))

try:  # `tests` is importable as a (namespace) package when pytest runs from the repo root ...
    from tests.hub_server import LocalHub
except ImportError:  # ... otherwise pytest's rootdir insertion puts tests/ itself on sys.path
    from hub_server import LocalHub


@pytest.fixture(scope="session")
def hub_server():
    """A LocalHub on HUB_PORT (the HF_ENDPOINT set above), shared by the session; repos persist across tests."""
    hub = LocalHub(port=HUB_PORT).start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def hub_token(hub_server) -> str:
    """The only token the local Hub accepts (write access, user `hub_server.user`)."""
    return hub_server.token


# ============================== end of the local Hub section =========================================
