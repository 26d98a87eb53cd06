"""The Celery app and tasks: an ingest job's stages as a chain of tasks, and the single-writer index sync."""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import exc as sa_exc

from indexer.jobs import STAGES, begin_stage, end_stage, finish_job, worker_id
from indexer.pipeline import StageEnv, Work, one_line, run_stage
from indexer.sync import sync_lock
from indexer.wiring import Deployment, Resources
from store import queries
from store.files import atomic_write

if TYPE_CHECKING:
    from celery import Celery, Task

logger = logging.getLogger(__name__)

# Errors that say "not now" rather than "never": the database or a server is unreachable for a
# while. Everything else a stage raises is about the file and fails the job at once.
TRANSIENT: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    ConnectionError,
    TimeoutError,
)
SYNC_TASK = "vidx.sync"
PING_TASK = "vidx.ping"


@dataclass(frozen=True)
class QueueConfig:
    """Everything a worker or a producer needs, as plain data (built from Settings by `vidx`)."""

    broker_url: str
    deployment: Deployment
    prefix: str = "vidx"
    visibility_timeout: int = 6 * 3600
    heartbeat_timeout: float = 60.0
    max_retries: int = 5
    max_attempts: int = 3
    max_memory_per_child_mb: int = 3072
    max_tasks_per_child: int = 200
    # The sync waits this long after a write, so files that finish together share one sync.
    sync_countdown: float = 2.0

    @property
    def ingest_queue(self) -> str:
        return f"{self.prefix}.ingest"

    @property
    def sync_queue(self) -> str:
        return f"{self.prefix}.sync"


class StagingUnreadableError(ValueError):
    """A staging file that this version of vidx cannot read (written by an older one, or damaged)."""


class Staging:
    """One file per job holding its stages' work between tasks, under the shared data directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, job_id: int) -> Path:
        return self.root / f"job-{int(job_id)}.pkl"

    def save(self, job_id: int, work: Work) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # pickle: the data are our own dataclasses and arrays, written and read by vidx only.
        with atomic_write(self.path(job_id)) as f:
            pickle.dump(work, f, protocol=pickle.HIGHEST_PROTOCOL)

    def load(self, job_id: int) -> Work | None:
        """The staged work, None if there is none; ``StagingUnreadableError`` (and the file dropped) if unreadable."""
        path = self.path(job_id)
        try:
            with path.open("rb") as f:
                work = pickle.load(f)  # noqa: S301 - our own staging file
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - a pickle of moved classes raises AttributeError, ModuleNotFoundError ...
            # Staged by a vidx whose modules have since moved (an upgrade with jobs in flight), or cut
            # short: its stages must run again, and `vidx jobs retry` starts the job from its probe.
            path.unlink(missing_ok=True)
            raise StagingUnreadableError(
                f"its staged work cannot be read by this vidx version ({type(e).__name__}: {e}); "
                f"`vidx jobs retry {job_id}` starts it again"
            ) from e
        if not isinstance(work, Work):
            path.unlink(missing_ok=True)
            raise StagingUnreadableError(f"its staged work is not a job's work; `vidx jobs retry {job_id}` starts it again")
        return work

    def drop(self, job_id: int) -> None:
        self.path(job_id).unlink(missing_ok=True)


class _Context:
    """Per worker process: the deployment's resources and the staging area, made on first use (after the fork)."""

    def __init__(self, config: QueueConfig) -> None:
        self.config = config
        # Models load lazily inside the Embedder, the backbone and Whisper caches: in this process only.
        self.resources = Resources(config.deployment)
        self.catalog = self.resources.catalog
        self.staging = Staging(self.resources.layout.staging)
        self.env = StageEnv(self.catalog, self.resources.store, config.deployment.ingest, self.resources.embedder())


_context_cache: dict[int, _Context] = {}


def _context(config: QueueConfig) -> _Context:
    ctx = _context_cache.get(os.getpid())
    if ctx is None:
        _context_cache.clear()  # a forked child must not use its parent's engine
        ctx = _context_cache[os.getpid()] = _Context(config)
    return ctx


def _backoff(retries: int) -> float:
    # 5, 10, 20, 40, 80 ... seconds, at most 5 minutes: the default 5 retries span a database
    # restart or failover (~2.5 minutes in all).
    return float(min(5 * 2**retries, 300))


def _next_stage(stage: str) -> str | None:
    i = STAGES.index(stage)
    return STAGES[i + 1] if i + 1 < len(STAGES) else None


def _stage_task(task: Task, stage: str, job_id: int, transient: int) -> str:
    from celery.exceptions import Reject

    config: QueueConfig = task.app.vidx_config  # type: ignore[attr-defined]
    ctx = _context(config)
    try:
        step = run_stage(
            ctx.env,
            job_id,
            stage,
            worker_id(),
            lambda: ctx.staging.load(job_id),
            keep=lambda work: ctx.staging.save(job_id, work),
            heartbeat_timeout=config.heartbeat_timeout,
            max_attempts=config.max_attempts,
            retrying=transient > 0,
            transient=TRANSIENT,
        )
    except TRANSIENT as e:
        if transient >= config.max_retries:
            logger.error("job %s: giving up on %s after %d retries: %s", job_id, stage, transient, e)
            try:
                finish_job(ctx.catalog, job_id, "failed", f"gave up after {transient} retries: {one_line(e)}")
            except TRANSIENT:
                # The catalog is still away: the job shows as running with a stale heartbeat;
                # `vidx jobs retry ID` puts it back.
                logger.error("job %s: could not record the failure either", job_id, exc_info=True)
                return "failed"
            ctx.staging.drop(job_id)
            return "failed"
        logger.warning("job %s: %s hit a transient error, retrying: %s", job_id, stage, one_line(e))
        _retry(task, job_id, transient + 1, _backoff(transient), stage_priority(config, stage))
    if step.start == "busy":
        # Another live worker runs this stage (a redelivery while it works): look again later.
        _retry(task, job_id, transient, max(config.heartbeat_timeout / 2, 1.0), stage_priority(config, stage))
    if step.result is not None or step.start == "finished":
        ctx.staging.drop(job_id)
        if step.result is not None and step.result.status == "indexed":
            _publish(task.app, SYNC_TASK, [], config.sync_queue, countdown=config.sync_countdown, required=False)
        return step.result.status if step.result is not None else "finished"
    following = _next_stage(stage)
    if following is not None:
        try:
            _publish(task.app, f"vidx.{following}", [job_id], config.ingest_queue, priority=stage_priority(config, following))
        except Exception as e:  # noqa: BLE001 - any failure to publish: this message must come back
            # The stage's output is kept and recorded, so the redelivered message only publishes.
            raise Reject(f"could not enqueue {following} of job {job_id}: {e}", requeue=True) from e
    return stage


def _retry(task: Task, job_id: int, transient: int, countdown: float, priority: int | None = None) -> None:
    from celery.exceptions import Reject

    try:
        # Positional ``args`` as the tasks are published (``[job_id]``): a retry without them would
        # reuse the request's ``[job_id]`` and pass job_id twice (a TypeError on every retry).
        raise task.retry(
            args=[job_id], kwargs={"transient": transient}, countdown=countdown, max_retries=None,
            priority=priority,
        )
    except Reject:
        raise
    except Exception as e:
        from celery.exceptions import Retry

        if isinstance(e, Retry):
            raise
        # The broker is unreachable as well: leave this message unacknowledged for redelivery.
        raise Reject(f"could not schedule a retry of job {job_id}: {e}", requeue=True) from e


def _publish(
    app: Celery, name: str, args: list[Any], queue: str, *, countdown: float | None = None, priority: int | None = None,
    required: bool = True,
) -> None:
    try:
        app.send_task(name, args=args, queue=queue, countdown=countdown, priority=priority)
    except Exception:
        if required:
            raise
        # A missed sync is caught by the next one, or by `vidx search`, which syncs a stale index.
        logger.warning("could not enqueue %s", name, exc_info=True)


def _sync_task(task: Task) -> int:
    from indexer.sync import sync_index
    from store.vectors import IndexLockedError

    config: QueueConfig = task.app.vidx_config  # type: ignore[attr-defined]
    ctx = _context(config)
    embedder = ctx.resources.embedder()
    summarizer = ctx.resources.summarizer()
    if not queries.count_stale(ctx.catalog, embedder.version) and not queries.stale_summary_ids(
        ctx.catalog, summarizer.version
    ):
        return 0
    try:
        with sync_lock(ctx.catalog) as got:
            if not got:
                # Another sync runs: it may have read the stale list before our file, so come back.
                _retry(task, 0, 0, 5.0)
            with ctx.resources.vectors() as vectors:
                report = sync_index(ctx.catalog, ctx.resources.store, vectors, ctx.resources.lexical, embedder,
                                    summarizer=summarizer)
    except IndexLockedError:
        _retry(task, 0, 0, 5.0)
    except TRANSIENT as e:
        logger.warning("index sync hit a transient error, retrying: %s", one_line(e))
        _retry(task, 0, 0, 10.0)
    for media_id, error in report.errors.items():
        logger.warning("index sync skipped media %s: %s", media_id, error)
    return report.upserted_media


def _ping_task(task: Task, job_id: int, stage: str) -> str:
    """A stage that does no work: the queue's own cost per stage (bench/queue_throughput.py measures it)."""
    config: QueueConfig = task.app.vidx_config  # type: ignore[attr-defined]
    ctx = _context(config)
    owner = worker_id()
    if begin_stage(ctx.catalog, job_id, stage, owner) != "run":
        return "skipped"
    following = _next_stage(stage)
    if following is None:
        finish_job(ctx.catalog, job_id, "skipped", "ping")
        return "done"
    end_stage(ctx.catalog, job_id, stage, owner)
    _publish(task.app, PING_TASK, [job_id, following], config.ingest_queue, priority=stage_priority(config, following))
    return stage


def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "redis+socket://"))


def stage_priority(config: QueueConfig, stage: str) -> int:
    """Later stages first, so a worker finishes the files it started before it probes new ones.

    Without this a batch runs breadth-first (every probe, then every analysis ...) and holds
    the staged work of every file at once. Redis reads priority 0 first; AMQP reads 9 first.
    """
    rank = STAGES.index(stage) * 3  # 0, 3, 6, 9: kombu's Redis priority steps
    return 9 - rank if _is_redis(config.broker_url) else rank


def _patch_kombu_redis_restore() -> None:
    """Keep a Redis outage from killing the worker (kombu 5.7, as in celery/kombu#970 and #582).

    When the broker vanishes, kombu closes the channel and gives back the unacknowledged
    messages it holds; by then its connection info is gone and ``restore_unacked`` raises
    AttributeError, an "unrecoverable error" that stops the worker. Those messages are still
    in Redis's unacked set, which the visibility timeout restores, so skipping the give-back
    loses nothing.
    """
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.QoS.restore_unacked
    if getattr(original, "_vidx_guarded", False):
        return

    def restore_unacked(self: Any, client: Any = None) -> Any:
        try:
            return original(self, client)
        except AttributeError:
            logger.warning("broker gone: %d unacknowledged messages come back after the visibility timeout", len(self._delivered))
            self._delivered.clear()
            return []

    restore_unacked._vidx_guarded = True  # type: ignore[attr-defined]
    kombu_redis.QoS.restore_unacked = restore_unacked


def _reset_after_fork(**_: Any) -> None:
    _context_cache.clear()


def create_app(config: QueueConfig) -> Celery:
    """A Celery app for ``config``: durable queues, late acks, prefetch one, recycled children."""
    try:
        from celery import Celery
        from celery.signals import worker_process_init
        from kombu import Exchange, Queue
    except ImportError as e:  # pragma: no cover - celery is a dependency
        raise RuntimeError("the distributed mode needs celery (pip install celery redis)") from e

    app = Celery("vidx", broker=config.broker_url, set_as_current=False)
    transport: dict[str, Any] = {}
    ingest_args: dict[str, Any] = {}
    if not _is_redis(config.broker_url):
        ingest_args = {"x-max-priority": 9}
    else:
        _patch_kombu_redis_restore()
        transport = {
            # Redis has no consumer-death detection: an unacknowledged task comes back after this.
            "visibility_timeout": config.visibility_timeout,
            "unacked_restore_interval": max(1, min(60, config.visibility_timeout // 10)),
            "unacked_restore_throttle": 1,
            # A publish to a vanished broker must fail (and be retried), not hang forever.
            "socket_timeout": 30,
            "socket_connect_timeout": 10,
        }
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        # Acknowledge after the task ran; a worker that dies mid-task gives its message back.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=config.max_tasks_per_child,
        worker_max_memory_per_child=config.max_memory_per_child_mb * 1024,
        broker_transport_options=transport,
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 10, "interval_start": 0.5, "interval_step": 1.0, "interval_max": 5.0},
        task_default_queue=config.ingest_queue,
        task_queues=[
            Queue(config.ingest_queue, Exchange(config.ingest_queue, type="direct"), routing_key=config.ingest_queue,
                  durable=True, queue_arguments=ingest_args or None),
            Queue(config.sync_queue, Exchange(config.sync_queue, type="direct"), routing_key=config.sync_queue, durable=True),
        ],
        task_routes={SYNC_TASK: {"queue": config.sync_queue}},
        worker_hijack_root_logger=True,
        worker_redirect_stdouts=False,
    )
    app.vidx_config = config  # type: ignore[attr-defined]

    for stage in STAGES:

        def run(self: Task, job_id: int, transient: int = 0, _stage: str = stage) -> str:
            return _stage_task(self, _stage, job_id, transient)

        app.task(name=f"vidx.{stage}", bind=True, max_retries=None)(run)

    def sync(self: Task, job_id: int = 0, transient: int = 0) -> int:
        return _sync_task(self)

    app.task(name=SYNC_TASK, bind=True, max_retries=None)(sync)

    def ping(self: Task, job_id: int, stage: str = STAGES[0]) -> str:
        return _ping_task(self, job_id, stage)

    app.task(name=PING_TASK, bind=True)(ping)
    worker_process_init.connect(_reset_after_fork, weak=False)
    return app


def enqueue(app: Celery, job_ids: Iterable[int], *, task: str = "vidx.probe") -> int:
    """Publish the first stage of each job on one connection; raises soon if the broker is unreachable."""
    config: QueueConfig = app.vidx_config  # type: ignore[attr-defined]
    # A person waits on this: a few quick retries, then a clear error rather than a minute of silence.
    policy = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}
    n = 0
    with app.producer_or_acquire() as producer:
        for job_id in job_ids:
            app.send_task(
                task, args=[int(job_id)], queue=config.ingest_queue, producer=producer, retry_policy=policy,
                priority=stage_priority(config, STAGES[0]),
            )
            n += 1
    return n


def run_worker(
    app: Celery, *, concurrency: int, queues: Sequence[str], loglevel: str = "INFO", name: str | None = None
) -> None:
    """Run a Celery worker in this process (prefork children) until it is stopped."""
    config: QueueConfig = app.vidx_config  # type: ignore[attr-defined]
    names = {"ingest": config.ingest_queue, "sync": config.sync_queue}
    resolved = [names.get(q, q) for q in queues]
    argv = [
        "worker",
        f"--concurrency={concurrency}",
        f"--queues={','.join(resolved)}",
        f"--loglevel={loglevel}",
        f"--hostname={name or f'vidx-{os.getpid()}@%h'}",
        "--prefetch-multiplier=1",
        "-O", "fair",
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)


def purge(app: Celery) -> int:
    """Drop every message waiting in this deployment's queues (tests and benchmarks)."""
    config: QueueConfig = app.vidx_config  # type: ignore[attr-defined]
    n = 0
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in (config.ingest_queue, config.sync_queue):
            try:
                n += channel.queue_purge(queue) or 0
            except Exception:  # noqa: BLE001 - a queue that was never declared has nothing to drop
                logger.debug("purge of %s failed", queue, exc_info=True)
    return n
