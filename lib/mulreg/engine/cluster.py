"""The `ray` executor: a sweep's pending groups trained as Ray tasks, on one machine or a cluster.

`run_groups_on_ray(groups, store, spec, bar)` is what `mulreg.engine.sweep.run` calls when the sweep's
`executor` is "ray". Each group (runs that train together as one vectorized stack, planned by
`sweep.plan_groups` with `task_size`, without touching the driver's devices) becomes one Ray task
asking for the resources it needs (`resources_for`: `gpus_per_task` of a GPU when the sweep's device
is CUDA, else one CPU); the worker trains it in a stack of as many slots as its own device holds
(`sizing.stack_size`), refilled as runs stop. See docs/CLUSTER.md for starting a cluster.

Where results are written: the DRIVER writes them. A task returns its `RunResult`s and the driver
saves each one into its own store with `Store.save` (a temporary folder renamed into place, and a
run already stored is kept, never overwritten), so

- workers need no shared file system: only the code and the data (`MULREG_DATA`) on every node;
- a run is never half-written (atomic rename) and never stored twice (the first copy wins);
- the driver holds the store's claim (flock) on every run it has submitted, so a second sweep on
  the same store, local or Ray, does not train those runs too.

Checkpoints: a worker writes training checkpoints into the store only when the store's folder is
visible on its node (a shared file system; checked with a token file the driver writes there for
this sweep). Then a task retried after its worker died resumes its runs from their last checkpoint;
without a shared store it starts them again.

Faults: a worker that dies (killed, node lost) has its task retried by Ray (`MAX_RETRIES`). A task
that raises an error is not retried (the error would come back); the others go on and the sweep
raises at the end. A driver that dies leaves every finished run in the store, its claims released
by the OS: rerunning the sweep trains only the rest, exactly as with the `local` executor. Ctrl-C
cancels the outstanding tasks and re-raises `KeyboardInterrupt`.

Ray itself: `ray_address` "local" starts a private instance (`workers` CPUs, default all) and shuts
it down afterwards; "auto", "host:port" or "ray://host:port" connect to a running cluster and
disconnect afterwards. If Ray is already initialised in this process (e.g. a notebook called
`ray.init()`), that connection is used and left open.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from mulreg.config import ConfigError, MulregError, RunConfig
from mulreg.engine.result import RunResult
from mulreg.engine.store import Store

MAX_RETRIES = 3  # Ray's retries of a task whose worker died
# Driver environment passed on to each task; applied on the worker only where the path exists there.
FORWARDED_ENV = ("MULREG_DATA", "MULREG_CACHE")


class TaskFailed(MulregError, RuntimeError):
    """A Ray task raised an error that is not one of mulreg's own (those come back as themselves)."""


def resources_for(group: list[RunConfig], cluster: dict | None = None, gpus: float = 1.0) -> dict:
    """What one task of `group` asks Ray for: `gpus` of a GPU (a fraction lets several stacks share
    one) and a CPU to drive it when the sweep's device is "cuda" (or "auto" and the cluster has
    GPUs), else one CPU (one torch thread)."""
    device = group[0].device
    if device == "auto":
        cluster = cluster if cluster is not None else _cluster_resources()
        device = "cuda" if cluster.get("GPU", 0) > 0 else "cpu"
    return {"num_cpus": 1, "num_gpus": gpus} if device == "cuda" else {"num_cpus": 1, "num_gpus": 0}


def task_size(config: RunConfig) -> int:
    """Runs per Ray task, planned on the driver without touching its devices: up to a full stack
    for a task that gets a GPU (the worker splits it into stacks its own GPU holds), one on CPUs."""
    from mulreg.engine.sizing import MAX_STACK, vectorizable

    return MAX_STACK if vectorizable(config) and resources_for([config])["num_gpus"] else 1


def run_groups_on_ray(groups: list[list[RunConfig]], store: Store, spec, bar: tqdm | None = None,
                      root=None, on_result: Callable[[RunResult], None] | None = None) -> dict:
    """Train `groups` as Ray tasks; on this (the driver's) side each result goes to `on_result` as it
    arrives (default: `store.save`; `mulreg.engine.sweep.run` also counts it on its progress bar).

    `bar` hears of failed tasks and shows how many groups are done.
    Returns counts: {"groups", "submitted", "runs_saved", "skipped"} (skipped: groups whose runs
    were all complete or held by another sweep when their turn came)."""
    ray = _import_ray()
    started = _connect(ray, spec)
    token = store.root / "claims" / f"ray-{uuid.uuid4().hex}.driver"
    try:
        token.write_text("a Ray sweep's driver is using this store; workers that see this file share it\n")
        return _Driver(ray, groups, store, spec, bar, root, token.name, on_result or store.save).run()
    finally:
        token.unlink(missing_ok=True)
        if started:
            ray.shutdown()


# ---- the driver
class _Driver:
    def __init__(self, ray, groups, store: Store, spec, bar, root, token: str, on_result):
        self.ray, self.store, self.spec, self.bar, self.token = ray, store, spec, bar, token
        self.on_result = on_result
        self.root = None if root is None else _absolute(root)
        self.queue = collections.deque(groups)
        self.inflight: dict = {}  # ObjectRef -> (group, ExitStack holding its claims)
        self.counts = {"groups": len(groups), "submitted": 0, "runs_saved": 0, "skipped": 0}
        self.done_groups = 0
        self.failures: list[tuple[list[RunConfig], BaseException]] = []
        # absolute paths: a worker's working directory is not the driver's
        self.env = {k: _absolute(os.environ[k]) for k in FORWARDED_ENV if os.environ.get(k)}
        self.remote = ray.remote(_train_task)

    def run(self) -> dict:
        self._check_feasible()
        self._postfix()
        try:
            while self.queue or self.inflight:
                self._fill()
                if not self.inflight:
                    continue
                ready, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=1.0)
                for ref in ready:
                    self._collect(ref)
        except BaseException:  # Ctrl-C, or an error on this side: stop the cluster's work too
            for ref in self.inflight:
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref, force=True)
            raise
        finally:
            for _, claims in self.inflight.values():
                claims.close()
        if self.failures:
            self._raise_first_failure()
        return self.counts

    def _raise_first_failure(self) -> None:
        """The first failed task's error as the local executor would show it: an anticipated error
        (bad data, a refused device) as itself, anything else as one line naming the task's runs."""
        group, err = self.failures[0]
        cause = getattr(err, "cause", None)
        if isinstance(cause, MulregError):
            raise cause
        raise TaskFailed(f"{len(self.failures)} of {self.counts['submitted']} Ray tasks failed; the first "
                         f"({len(group)} runs, e.g. {group[0].key()}) with: {_first_line(err)}. Finished runs are "
                         "stored: rerun the sweep to train the rest; Ray's logs (/tmp/ray/session_latest/logs) "
                         "hold the traceback")

    def _check_feasible(self) -> None:
        if not self.queue:
            return
        cluster = _cluster_resources()
        wanted = resources_for(self.queue[0], cluster)
        if wanted["num_gpus"] and not cluster.get("GPU", 0):
            raise ConfigError(f"the sweep's device is {self.queue[0][0].device!r} but the Ray cluster has no GPU "
                              f"(resources: {cluster}); see `ray status`")

    def _capacity(self) -> int:
        """Tasks kept submitted at once: twice what the cluster can run now (it may grow), so claims
        stay few and Ctrl-C has little to cancel."""
        cluster = _cluster_resources()
        wanted = resources_for(self.queue[0], cluster, self.spec.gpus_per_task) if self.queue else {"num_gpus": 0}
        if wanted["num_gpus"]:
            return max(2, 2 * int(cluster.get("GPU", 0) / wanted["num_gpus"]))
        return max(2, 2 * int(cluster.get("CPU", 0)))

    def _fill(self) -> None:
        capacity = self._capacity() if self.queue else 0
        while self.queue and len(self.inflight) < capacity:
            group = self.queue.popleft()
            claims = contextlib.ExitStack()
            # claim() yields the keys it could lock that are not complete: the last check before submitting
            todo = set(claims.enter_context(self.store.claim([c.key() for c in group])))
            group = [c for c in group if c.key() in todo]
            if not group:
                claims.close()
                self.counts["skipped"] += 1
                self.done_groups += 1
                continue
            try:
                resources = resources_for(group, gpus=self.spec.gpus_per_task)
                ref = self.remote.options(**resources, max_retries=MAX_RETRIES, retry_exceptions=False,
                                          name=f"mulreg-group-{len(group)}runs").remote(
                    group, _absolute(self.store.root), self.token, self.store.every, self.env, self.root)
            except BaseException:
                claims.close()
                raise
            self.inflight[ref] = (group, claims)
            self.counts["submitted"] += 1

    def _collect(self, ref) -> None:
        group, claims = self.inflight.pop(ref)
        self.done_groups += 1
        self._postfix(refresh=False)
        try:
            results = self.ray.get(ref)
        except self.ray.exceptions.RayError as err:  # retries used up, or the task raised
            self.failures.append((group, err))
            if self.bar is not None:
                self.bar.write(f"ray task failed ({len(group)} runs, e.g. {group[0].key()}): {_first_line(err)}")
        else:
            for result in results:
                self.on_result(result)
                self.counts["runs_saved"] += 1
        finally:
            claims.close()

    def _postfix(self, refresh: bool = True) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"ray groups {self.done_groups}/{self.counts['groups']}, "
                                     f"{len(self.inflight)} submitted", refresh=refresh)


def _absolute(path) -> str:
    return str(Path(path).expanduser().resolve())


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("executor: ray needs Ray installed: pip install -e '.[ray]' (docs/CLUSTER.md)") from None
    return ray


def _connect(ray, spec) -> bool:
    """Initialise Ray as `spec.ray_address` says; True when this call did (and must shut it down)."""
    if ray.is_initialized():
        return False
    with _sigterm_kept():
        return _init(ray, spec)


@contextlib.contextmanager
def _sigterm_kept():
    """Ray's core worker replaces the process's SIGTERM handler with one that aborts the driver; put
    back a Python one that was there (`mulreg.__main__`'s: SIGTERM stops the sweep as Ctrl-C does,
    cancelling its tasks)."""
    handler = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(handler) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)


ADDRESS = re.compile(r"^(local|auto|(ray://)?[A-Za-z0-9._\-\[\]:]+:\d{1,5})$")  # the forms Ray takes


def check_address(address: str) -> None:
    """Refuse an address in none of the forms Ray takes (Ray would raise a bare ValueError, or wait on
    something else); cheap: Ray is not imported."""
    if not ADDRESS.match(address):
        raise ConfigError(f"ray_address: {address!r} is not a Ray address; give local, auto, host:port or "
                          f"ray://host:port. {START_HINT}")


def _init(ray, spec) -> bool:
    check_address(spec.ray_address)
    quiet = dict(logging_level=logging.WARNING, log_to_driver=True)
    if spec.ray_address == "local":
        ray.init(address="local", num_cpus=spec.workers or os.cpu_count() or 1, include_dashboard=False, **quiet)
        return True
    if not _listening(spec.ray_address):  # else Ray waits minutes for a cluster that is not there
        raise ConfigError(f"ray_address: no Ray cluster at {spec.ray_address!r} (nothing listens there); {START_HINT}")
    if not _speaks_ray(spec.ray_address):  # another kind of server: Ray would wait minutes on it
        raise ConfigError(f"ray_address: {spec.ray_address!r} answers, but not as a Ray cluster (no gRPC within "
                          f"{PROBE_SECONDS:g} s, or no Ray service there): give the head's GCS port (6379 unless "
                          f"`ray start --port` set another) or its Ray Client port (ray://host:10001). {START_HINT}")
    refused = getattr(ray.exceptions, "AuthenticationError", ())  # e.g. token mode set, no token found
    failures = (ConnectionError, refused) if refused else ConnectionError
    with _stderr_captured() as log:  # Ray's C++ client logs each refused attempt there
        try:
            ray.init(address=spec.ray_address, **quiet)
            failure = None
        except failures as err:
            failure = err
    if failure is None:
        sys.stderr.write(log[0])  # nothing is hidden from a connection that worked
        return True
    if isinstance(failure, refused) or any(mark in log[0] for mark in AUTH_REFUSED):
        raise ConfigError(f"ray_address: the Ray cluster at {spec.ray_address!r} is up but refused this driver: "
                          f"authentication failed. {AUTH_HINT}")
    raise ConfigError(f"ray_address: no Ray cluster at {spec.ray_address!r} ({_first_line(failure)}); {START_HINT}")


PROBE_SECONDS = 5.0  # how long the driver waits for a cluster address to answer before it says so


def _host_port(address: str) -> tuple[str, int] | None:
    """("host", port) of "host:port" or "ray://host:port"; None for "auto"."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def _listening(address: str) -> bool:
    """False when something is named by `address` and nothing accepts a TCP connection there."""
    named = _host_port(address)
    if named is None:
        return True
    try:
        socket.create_connection(named, timeout=PROBE_SECONDS).close()
    except OSError:
        return False
    return True


def _speaks_ray(address: str) -> bool:
    """False when the server at `address` does not open a gRPC channel (HTTP/2) within PROBE_SECONDS, or
    opens one but knows no method of Ray's there (UNIMPLEMENTED: another gRPC service); True when it
    answers as Ray's GCS or Ray Client does (a refusal, say of a token, counts), or when the probe cannot
    tell (TLS, no grpcio)."""
    named = _host_port(address)
    if named is None or os.environ.get("RAY_USE_TLS", "0") not in ("0", ""):
        return True
    try:
        import grpc
    except ImportError:
        return True
    host, port = named
    method = RAY_CLIENT_METHOD if address.startswith("ray://") else GCS_METHOD
    with grpc.insecure_channel(f"[{host}]:{port}" if ":" in host else f"{host}:{port}") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=PROBE_SECONDS)
            channel.unary_unary(method)(b"", timeout=PROBE_SECONDS)  # an empty request: every field at its default
        except grpc.FutureTimeoutError:
            return False
        except grpc.RpcError as err:
            return err.code() != grpc.StatusCode.UNIMPLEMENTED
    return True


GCS_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"  # the first call Ray's driver makes to a GCS
RAY_CLIENT_METHOD = "/ray.rpc.RayletDriver/ClusterInfo"  # a Ray Client server's (ray://host:10001)
START_HINT = "start one with `ray start --head` (docs/CLUSTER.md), or use ray_address: local."
AUTH_REFUSED = ("Unauthenticated", "InvalidAuthToken")  # what Ray's GCS client logs when the token is refused
AUTH_HINT = ("Give the driver the cluster's mode and token: `export RAY_AUTH_MODE=token`, and the token "
             "in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN (`ray get-auth-token` on the head "
             "prints it); see docs/CLUSTER.md, 'Authentication first'.")


@contextlib.contextmanager
def _stderr_captured():
    """Everything written to file descriptor 2 (C++ logs included) goes to a list's one string."""
    log: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield log
            except BaseException:  # an unexpected error: show what was captured with it
                _restore(saved)
                tmp.seek(0)
                sys.stderr.write(tmp.read().decode(errors="replace"))
                raise
            _restore(saved)
            tmp.seek(0)
            log.append(tmp.read().decode(errors="replace"))
    finally:
        _restore(saved)
        os.close(saved)


def _restore(saved: int) -> None:
    """File descriptor 2 back to `saved` (idempotent)."""
    try:
        sys.stderr.flush()
    finally:
        os.dup2(saved, 2)


@contextlib.contextmanager
def session(spec):
    """Ray connected (or started) as `spec` says for the body, shut down afterwards if this opened it:
    `mulreg.engine.sweep.run` opens it before any progress bar, so a refused connection is the only output."""
    ray = _import_ray()
    started = _connect(ray, spec)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _cluster_resources() -> dict:
    import ray

    return ray.cluster_resources() if ray.is_initialized() else {}


# ---- the task (runs on a worker)
def _train_task(group: list[RunConfig], store_root: str, token: str, every: int, env: dict[str, str],
                root: str | None) -> list:
    """Train one group on this worker and return its `RunResult`s (weights on the CPU)."""
    import torch

    from mulreg.core.devices import resolve_device
    from mulreg.engine.sizing import stack_size
    from mulreg.engine.train import train_group

    saved = {k: os.environ.get(k) for k in env}
    try:
        for k, v in env.items():  # the driver's data and cache paths, where this node has them
            if Path(v).exists():
                os.environ[k] = v
        if resolve_device(group[0].device).type == "cpu":
            torch.set_num_threads(1)  # one CPU per task; more threads only contend (docs/PERFORMANCE.md)
        shared = (Path(store_root) / "claims" / token).is_file()
        checkpoints = Store(store_root, every).checkpoints() if shared else None
        # stacks as large as this worker's device holds (not the driver's), refilled as runs stop
        return train_group(group, root=root, checkpoints=checkpoints, progress=False, slots=stack_size(group[0]))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
