"""Ray, imported lazily: a local cluster (`ray.init()`: the CPUs and GPUs of this machine) or an existing one
(`--address host:port` of `ray start --head`, `auto`, or `ray://host:10001`), quiet, with one-line errors for a
missing install and an unreachable address."""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from defect_vision.errors import ConfigError

INSTALL = "pip install 'defect-vision[distributed]'"
CONNECT_TIMEOUT_S = 5.0
QUIET = ("ray._private.authentication.authentication_token_setup",  # "token authentication is enabled" (local)
         "ray.data._internal.progress")  # "progress bars disabled": ours are the progress lines


def require_ray():
    """The ray module; DatasetError saying how to install it when it is not there."""
    try:
        import ray
        import ray.data  # noqa: F401 - the [data] extra
    except ImportError as exc:
        raise ConfigError(f"{{engine}} ray: Ray Data is not installed ({exc.name or exc}); {INSTALL}", "engine") from None
    return ray


def host_port(address: str) -> tuple[str, int] | None:
    """('10.0.0.5', 6379) of 'host:port' or 'ray://host:port'; None for 'auto'; DatasetError for anything else."""
    if address == "auto":
        return None
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{{address}} {address}: expected host:port (the head node's port from `ray start --head`, "
                           "6379 by default), ray://host:port, or auto", "address")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """DatasetError at once when nothing answers at `address` (Ray itself retries for a minute before failing)."""
    hp = host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout):
            pass
    except OSError as exc:
        why = exc.strerror or exc.__class__.__name__
        raise ConfigError(f"{{address}} {address}: no Ray cluster reachable there ({why}); start one with "
                           "`ray start --head` on the head node, or leave {address} out for a local cluster", "address") from None


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator:
    """Yield the ray module, connected: the running session when there is one (tests, notebooks), else a new
    local cluster or the cluster at `address` (shut down again at the end)."""
    ray = require_ray()
    if address:
        check_reachable(address)
    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # no C++ error lines about restartable actors
        for name in QUIET:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            ray.init(address=address or None, num_cpus=None if address else num_cpus, include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
            raise ConfigError(f"{{address}} {address or 'local'}: could not start or join a Ray cluster ({first})", "address") from None
        started = True
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # progress is ours: images/s and ETA
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
