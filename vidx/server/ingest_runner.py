"""Ingestion on behalf of the API: embedded, one child process at a time (the server stays light and the index single-writer); with a broker, the queue."""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vidx.app import App

logger = logging.getLogger(__name__)

_SYNC = "sync"


class IngestRunner:
    """Creates the jobs of a request at once; a background thread runs them in a fresh `vidx` child, batch after batch."""

    def __init__(self, vapp: App) -> None:
        self.vapp = vapp
        self._work: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._celery: Any = None
        self._lock = threading.Lock()
        self._stopping = False

    @property
    def queued_mode(self) -> bool:
        return bool(self.vapp.settings.broker_url)

    def submit(self, files: Sequence[Path]) -> tuple[str, list[int]]:
        """One job per file in a new batch; returns (batch, job ids) before any work starts."""
        from indexer.jobs import create_jobs, finish_job

        batch = str(uuid.uuid4())
        job_ids = create_jobs(self.vapp.catalog, files, batch=batch)
        if self.queued_mode:
            from indexer.tasks import enqueue

            try:
                enqueue(self._queue_app(), job_ids)
            except Exception as e:  # the broker is unreachable: the jobs say so, `vidx jobs retry` later
                reason = f"not queued: broker unreachable ({type(e).__name__})"
                for job_id in job_ids:
                    finish_job(self.vapp.catalog, job_id, "failed", reason)
                raise RuntimeError(reason) from e
        else:
            self._put(batch)
        return batch, job_ids

    def request_sync(self) -> None:
        """Bring the index in line with the catalog soon (after a delete), by its single writer."""
        if self.queued_mode:
            try:
                self._queue_app().send_task("vidx.sync", args=[], queue=self.vapp.queue_config().sync_queue)
            except Exception:  # noqa: BLE001 - the next sync catches up; search skips deleted media meanwhile
                logger.warning("could not publish an index sync", exc_info=True)
            return
        self._put(_SYNC)

    def _queue_app(self) -> Any:
        with self._lock:
            if self._celery is None:
                from indexer.tasks import create_app

                self._celery = create_app(self.vapp.queue_config())
            return self._celery

    def _put(self, item: str) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="vidx-ingest-runner", daemon=True)
                self._thread.start()
        self._work.put(item)

    def _env(self) -> dict[str, str]:
        # The child opens exactly this deployment, whatever the server's own overrides were.
        s = self.vapp.settings
        return dict(os.environ, VIDX_DATA_DIR=str(self.vapp.data_dir), VIDX_DATABASE_URL=s.resolved_database_url())

    def _loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            args = ["reindex", "--stale"] if item == _SYNC else ["ingest", "--run-batch", item]
            try:
                with self._lock:
                    if self._stopping:  # batches still queued at shutdown stay queued, no child outlives the server
                        return
                    self._child = subprocess.Popen([sys.executable, "-m", "vidx", *args], env=self._env(),
                                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
                code = self._child.wait()
                if code not in (0, 1):  # 1: some file failed, which its job row says
                    logger.warning("`vidx %s` exited %s", " ".join(args), code)
            except Exception:  # noqa: BLE001 - the runner must outlive one bad batch
                logger.exception("ingest child failed")
            finally:
                with self._lock:
                    self._child = None

    def stop(self) -> None:
        """Interrupt the running child (its job ends 'interrupted', retryable) and stop the thread."""
        with self._lock:
            self._stopping = True
            child, thread = self._child, self._thread
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
        if thread is not None:
            self._work.put(None)
            thread.join(timeout=5)
        self._fail_pending()

    def _fail_pending(self) -> None:
        """Batches that never started end failed with a reason, not queued forever with nobody to run them."""
        from indexer.jobs import fail_queued

        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                return
            if item not in (None, _SYNC):
                fail_queued(self.vapp.catalog, batch=item, reason="the server stopped before it ran; ingest it again")
