"""The Ray engine: CPU stages as Ray tasks (one per work unit), model stages as an
actor pool that loads its models once per actor.

- `address=None` starts a local Ray with `num_cpus=workers`; otherwise joins the
  cluster at `address` (HOST:PORT or "auto"), optionally with a runtime_env.
- Tasks are retried (`max_retries`) when their worker or node dies; the shard
  commit is an atomic rename of a deterministic shard, so a redone unit is
  written exactly once.
- Labeler actors: `num_gpus["label"]` GPUs each plus any custom resources
  (`label_resources`), restarted when they die (`max_restarts=-1`) with their
  calls retried (`max_task_retries`).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from pipelines import attempts
from pipelines.engines.local import apply_or_fail
from pipelines.stages import label_resources, resources_of

log = logging.getLogger(__name__)

RAY_ATTEMPTS_DIR = "ray-attempts"  # under the job directory
# Unit tasks in flight per cluster CPU: enough queued that no core waits for the driver to submit
# the next one, few enough that the driver holds a bounded number of pending references.
IN_FLIGHT_PER_CPU = 4
# Ray's raylet puts each worker in a process group of its own (RayConfig
# `process_group_cleanup_enabled`, on by default), so a kill of the job's process group (a shell's
# Ctrl-C, a batch scheduler, `kill -- -PGID`) misses the workers; a worker still starting when its
# raylet dies lives on for about 30 s (measured). A local cluster that this engine starts keeps its
# workers in the driver's group instead; a user's own setting of the variable wins.
WORKER_PROCESS_GROUPS_ENV = "RAY_process_group_cleanup_enabled"


class _LabelerActor:
    def __init__(self, cfg):
        from labelers.threads import limit_threads
        from pipelines.config import ConfigError
        from pipelines.stages import local_labeler

        limit_threads(cfg.engine.threads_per_worker)
        self.calls = 0
        self.error = None  # (key, value, expected) of the ConfigError that stopped the build
        try:
            self.labeler = local_labeler(cfg)  # models loaded once per actor
        except ConfigError as exc:  # kept, not raised: a dead actor would be restarted to fail again
            self.error = (exc.key, exc.value, exc.expected)

    def config_error(self):
        return self.error

    def label(self, episode, seed_key):
        from pipelines.stages import _set_seeds

        _set_seeds(*seed_key)
        self.calls += 1
        return self.labeler(episode)

    def node(self):
        import ray

        return ray.get_runtime_context().get_node_id()


class RemoteLabeler:
    """Callable Episode -> EpisodeLabels that sends the episode to the actor pool
    (round robin) and waits; used inside the unit tasks."""

    def __init__(self, actors, seed: int):
        self.actors = list(actors)
        self.seed = seed
        self._next = itertools.count(os.getpid())

    def __call__(self, episode):
        import ray

        actor = self.actors[next(self._next) % len(self.actors)]
        return ray.get(actor.label.remote(episode, (self.seed, episode.episode_id)))


class RayEngine:
    name = "ray"

    def __init__(self, cfg, job_dir=None):
        self.cfg = cfg
        self.eng = cfg.engine
        self._started = False
        self._actors = []
        self.retried = 0
        # One marker file per task attempt (which task, on which node), written by the attempt
        # itself before its work, on the job directory's shared storage: a record that no node
        # loss can take away. Without a job directory (direct use) a temp dir of this process.
        self._own_attempt_dir = job_dir is None
        if job_dir is None:
            self.attempt_dir = tempfile.mkdtemp(prefix="ray-attempts-")
        else:  # this run's attempts only
            self.attempt_dir = str(Path(job_dir) / RAY_ATTEMPTS_DIR)
            shutil.rmtree(self.attempt_dir, ignore_errors=True)
            os.makedirs(self.attempt_dir)
        self._keys: dict = {}

    def __enter__(self) -> "RayEngine":
        import ray

        if not ray.is_initialized():
            env = dict(self.eng.runtime_env or {})
            env.setdefault("env_vars", {})
            for k in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "TF_CPP_MIN_LOG_LEVEL"):
                if k in os.environ:
                    env["env_vars"].setdefault(k, os.environ[k])
            kw = dict(runtime_env=env, log_to_driver=False, include_dashboard=False)
            if self.eng.address:
                ray.init(address=self.eng.address, **kw)
            else:
                os.environ.setdefault(WORKER_PROCESS_GROUPS_ENV, "0")  # read by the raylet it starts
                ray.init(num_cpus=self.eng.workers, **kw)  # GPUs autodetected for labeler actors
            self._started = True
        return self

    def __exit__(self, *exc) -> None:
        import ray

        for a in self._actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001
                pass
        self._actors = []
        if self._started:
            ray.shutdown()
        if self._own_attempt_dir:
            shutil.rmtree(self.attempt_dir, ignore_errors=True)

    def parallelism(self) -> int:
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", self.eng.workers)))

    def labeler(self, cfg):
        import ray

        need = label_resources(cfg)
        n = self.eng.label_actors
        if n < 0:  # auto: an actor per GPU (at least one) when the stage holds a model, else none
            n = max(1, int(ray.cluster_resources().get("GPU", 0))) if need.model else 0
        if n == 0:
            return None
        actor_cls = ray.remote(_LabelerActor).options(
            num_cpus=need.cpus, num_gpus=need.gpus,
            resources=dict(self.eng.label_resources or {}),
            max_restarts=-1, max_task_retries=self.eng.max_retries,
        )
        self._actors = [actor_cls.remote(cfg) for _ in range(n)]
        log.info("labeler actor pool: %d actors (num_gpus=%s each)", n, need.gpus)
        _wait_started(self._actors)
        return RemoteLabeler(self._actors, cfg.seed)

    def map_unordered(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        import ray

        need = resources_of(fn)
        run = ray.remote(_attempt).options(num_cpus=need.cpus, num_gpus=need.gpus, max_retries=self.eng.max_retries,
                                           retry_exceptions=False)
        fn_ref = ray.put(fn)
        items = list(items)
        window = IN_FLIGHT_PER_CPU * self.parallelism()  # bounded in flight: the driver's memory does not grow with the job
        pending: dict = {}
        it = iter(items)
        keys = itertools.count(len(self._keys))
        for item in itertools.islice(it, window):
            key = next(keys)
            self._keys[key] = item
            pending[run.remote(fn_ref, item, key, self.attempt_dir)] = item
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                item = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - retries exhausted (node lost repeatedly)
                    from pipelines.engines.local import Failure

                    result = Failure(f"{type(exc).__name__}: {exc}")
                yield item, result
            for item in itertools.islice(it, len(done)):
                key = next(keys)
                self._keys[key] = item
                pending[run.remote(fn_ref, item, key, self.attempt_dir)] = item

    def attempt_stats(self) -> dict:
        """Task attempts of this run: total, retried units (more than one attempt: a
        worker or node died under them) and where the attempts ran."""
        records = attempts.read(self.attempt_dir)  # in start order: a retry after its loss
        per_key: dict = {}
        by_node: dict = {}
        for a in records:
            per_key.setdefault(a.key, []).append(a.node)
            by_node[a.node] = by_node.get(a.node, 0) + 1
        retried = [{"unit": _describe(self._keys.get(k)), "attempts": len(v), "nodes": v}
                   for k, v in sorted(per_key.items()) if len(v) > 1]
        return {"task_attempts": len(records), "tasks": len(per_key), "retried_tasks": len(retried),
                "retried": retried, "attempts_by_node": by_node}

    def stats(self) -> dict:
        import ray

        out = {"cluster_resources": {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")},
               "nodes": len([n for n in ray.nodes() if n.get("Alive")]), "label_actors": len(self._actors)}
        try:
            out["attempts"] = self.attempt_stats()
            out["label_actor_nodes"] = ray.get([a.node.remote() for a in self._actors], timeout=60)
        except Exception as exc:  # noqa: BLE001 - reporting must not fail a finished job
            out["attempts_error"] = f"{type(exc).__name__}: {exc}"
        return out


def _wait_started(actors) -> None:
    """Wait until every labeler actor has built its labeler; raise the ConfigError of one
    that could not (a model that does not load) here, before any unit, instead of once per
    episode from inside the units."""
    import ray

    from pipelines.config import ConfigError

    for error in ray.get([a.config_error.remote() for a in actors]):
        if error is not None:
            raise ConfigError(*error)


def _attempt(fn, item, key: int, attempt_dir: str):
    """One attempt of a task: marked (pipelines.attempts) with its task key and node before
    the work, so an attempt lost with its node still counts as tried."""
    import ray

    attempts.mark(attempt_dir, key, ray.get_runtime_context().get_node_id())
    return apply_or_fail(fn, item)


def _describe(item) -> str:
    return item.describe() if hasattr(item, "describe") else repr(item)
