"""The service's process pool: `ProcessExecutor`, with workers that die with the service.

A worker of the plain pool whose parent is killed (SIGKILL, OOM) finishes the task it holds
before it notices; a service started again meanwhile would run that task a second time, on the
same branch and log. These workers watch their parent instead and exit as soon as it is gone
(the bubblewrap sandbox takes the running command with them: `--die-with-parent`).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from pullsmith.executors import ProcessExecutor, _Worker, _worker_main

# How often a worker checks that the service that started it is still there.
PARENT_CHECK_S = 0.25


def _watched_worker_main(inbox: Any, outbox: Any, parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)  # the service is gone: nobody would record what this worker does

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    _worker_main(inbox, outbox)


class ServiceExecutor(ProcessExecutor):
    """`ProcessExecutor` whose worker processes exit when the service process dies."""

    def _spawn(self) -> _Worker:
        receive, send = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=_watched_worker_main,
            args=(receive, self._outbox, os.getpid()),
            name="pullsmith-worker",
            daemon=True,
        )
        process.start()
        receive.close()
        return _Worker(process=process, inbox=send)
