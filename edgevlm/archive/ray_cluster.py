"""The archive on a Ray cluster: Ray Data maps a stateful captioning class over the inputs with a fixed pool of
actors, and each actor loads the model once (the [ray] extra).

The driver (the process that planned the run) stays the only manifest writer: actors caption into the outputs on
shared storage, atomically, and return rows, which the driver records as they stream back. When an actor dies
(its node is lost, or the process is killed), Ray restarts it and retries the batch it held. Outputs are renamed
into place, so a retried input ends with exactly one complete output, and the driver writes its row once, when
that batch's result arrives.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from typing import Any, TypeGuard

from ..errors import InputError


class Captioner:
    """A Ray Data callable class: the model is loaded in __init__, once per actor."""

    def __init__(self, load_kwargs: dict, fmt: str, options: dict):
        from ..vlm import load

        self.vlm, self.fmt, self.options = load(**load_kwargs), fmt, options

    def __call__(self, batch: dict) -> dict:
        from .work import caption_item

        n = len(batch["input"])
        items = [{k: _plain(batch[k][i]) for k in batch} for i in range(n)]
        rows = [caption_item(self.vlm, item, self.fmt, self.options) for item in items]
        return {k: [row.get(k) for row in rows] for k in _ROW_KEYS}


_ROW_KEYS = (
    "input",
    "output",
    "kind",
    "input_size",
    "input_mtime_ns",
    "worker",
    "status",
    "sha256",
    "error",
    "duration",
    "segments",
    "seconds",
    "finished_at",
)


def _connect(ray: Any, address: str | None) -> None:
    """ray.init, its failure said in one line with the likely cause (token authentication is Ray's default for new
    clusters; run_ray has already checked that something listens there)."""
    remote = _remote(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        why = f"could not connect to the Ray cluster at {address}: {e}"
        if remote and os.environ.get("RAY_AUTH_MODE") == "token":
            why += (
                ". This machine's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) may not be the "
                "cluster's"
            )
        elif remote:
            why += (
                ". If the cluster uses token authentication (Ray's default), give this command its token: copy the "
                "head's ~/.ray/auth_token here or set RAY_AUTH_TOKEN (docs/archive.md)"
            )
        raise InputError(why + ".") from None


def _remote(address: str | None) -> TypeGuard[str]:
    """A cluster elsewhere, named HOST:PORT: not the local one ("auto") nor a private one started here (None)."""
    return address is not None and address != "auto"


def _check_listening(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"a Ray address is HOST:PORT (e.g. 10.0.0.5:6379) or 'auto'; got {address!r}.")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise InputError(
            f"could not reach the Ray cluster at {address}: {e.strerror or e}. Is `ray start --head` running there?"
        ) from None


def _auth_token_present() -> bool:
    """Where Ray looks for a cluster token (its token-auth docs): the variable, a named file, the default file."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    return os.path.isfile(path)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def run_ray(
    address: str | None, load_kwargs: dict, items: list[dict], fmt: str, options: dict, actors: int, threads: int | None
) -> Iterator[dict]:
    """Rows as the cluster finishes inputs. address: "HOST:PORT" of a running cluster ("auto" for the local
    one), or None to start a private cluster in this process. threads per actor: by default the cluster's CPUs
    shared between the actors, at most one node's worth (an actor runs on one node)."""
    if _remote(address):
        _check_listening(address)
        if "RAY_AUTH_MODE" not in os.environ and _auth_token_present():
            # What `ray start` does for a cluster when a token is present; a driver connecting does not (~20 lines
            # of InvalidAuthToken, then a bare "Failed to connect"). Before the import: Ray reads it once.
            os.environ["RAY_AUTH_MODE"] = "token"
    try:
        import ray
    except ImportError:
        raise InputError("captioning on a Ray cluster needs Ray: pip install 'edgevlm[ray]'.") from None
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")  # the CLI shows its own progress and summary
    if not ray.is_initialized():
        _connect(ray, address)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    threads = threads or _threads_per_actor(actors)
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))  # one input per block: fine retries
    captions = ds.map_batches(
        Captioner,
        fn_constructor_kwargs={"load_kwargs": {**load_kwargs, "threads": threads}, "fmt": fmt, "options": options},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=threads,
    )
    # Ray Data's actor pools restart dead actors and retry their tasks by default (max_restarts and
    # max_task_retries -1): what makes a lost worker's inputs come back.
    for row in captions.iter_rows():
        yield {k: _plain(v) for k, v in row.items()}


def _threads_per_actor(actors: int) -> int:
    import ray

    nodes = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    total = sum(nodes) or os.cpu_count() or 1
    return int(max(1, min(max(nodes, default=total), total // actors)))
