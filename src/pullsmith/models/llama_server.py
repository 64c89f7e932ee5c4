"""Child process that runs llama.cpp's HTTP server through xllamacpp.

Run as `python -m pullsmith.models.llama_server --model PATH --port N ...`. The parent
(`pullsmith.models.local`) waits for `/health`, and stops it with SIGTERM. Keeping the server in
its own process isolates a native crash and lets the parent handle Ctrl-C on its own.

`xlc.Server(params)` starts the HTTP listener first (so `/health` answers 503 while loading),
blocks until the model is loaded, then serves from background threads. xllamacpp installs no
signal handlers, so this module does: SIGTERM/SIGINT end the wait and the server is torn down by
dropping the `Server` object (its destructor stops the loop and joins its threads).

Speculative decoding (`--speculative ngram|draft`, see `pullsmith.config.Speculation`) sets
`params.speculative` of the xllamacpp build this was written against (2026.10.11549): its
`types` list (ngram-simple or draft-simple), `ngram_simple.size_n`/`size_m`, and
`draft.mparams.path`, `draft.n_max`/`n_min`/`p_min`. Naming the type matters: llama.cpp loads a
draft model given without one but never drafts with it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pullsmith.config import SPECULATIVE_MODES, Speculation
from pullsmith.errors import UserError

if TYPE_CHECKING:
    import xllamacpp

READY_MARKER = "pullsmith-llama-server: ready"


def build_params(
    model: str,
    port: int,
    host: str = "127.0.0.1",
    n_ctx: int = 8192,
    threads: int = 2,
    parallel: int = 1,
    cache_ram_mib: int | None = None,
    speculation: Speculation | None = None,
) -> xllamacpp.CommonParams:
    """The `xllamacpp.CommonParams` for one llama.cpp server.

    `n_ctx` is the context of each slot: the KV cache holds `n_ctx * parallel` tokens and
    llama.cpp splits it evenly across the `parallel` slots (kv_unified stays off).
    `speculation` (default off) sets `params.speculative`, see `apply_speculation`.
    """
    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = model
    params.hostnames = [host]
    params.port = port
    params.n_parallel = parallel
    params.n_ctx = n_ctx * parallel
    params.kv_unified = False
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.cache_prompt = True
    params.cont_batching = True
    params.ui = False
    params.endpoint_metrics = True
    if cache_ram_mib is not None:
        params.cache_ram_mib = cache_ram_mib
    if speculation is not None:
        apply_speculation(params, speculation)
    return params


def apply_speculation(params: xllamacpp.CommonParams, speculation: Speculation) -> None:
    """Set `params.speculative` for `speculation`; "off" leaves llama.cpp's default (none).

    ngram: `types = [NGRAM_SIMPLE]`, `ngram_simple.size_n` (tokens matched) and `size_m` (tokens
    drafted). draft: `types = [DRAFT_SIMPLE]`, `draft.mparams.path`, `draft.n_max`, `n_min`,
    `p_min`; the draft model gets the main model's threads. A value left None keeps llama.cpp's.
    """
    import xllamacpp as xlc

    speculation.check()
    kinds = xlc.common_speculative_type
    spec = params.speculative
    if speculation.mode == "ngram":
        spec.types = [kinds.COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE]
        if speculation.ngram_size is not None:
            spec.ngram_simple.size_n = speculation.ngram_size
        if speculation.draft_max is not None:
            spec.ngram_simple.size_m = speculation.draft_max
    elif speculation.mode == "draft":
        spec.types = [kinds.COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE]
        spec.draft.mparams.path = str(speculation.model)
        if speculation.draft_max is not None:
            spec.draft.n_max = speculation.draft_max
        if speculation.draft_min is not None:
            spec.draft.n_min = speculation.draft_min
        if speculation.p_min is not None:
            spec.draft.p_min = speculation.p_min


def speculation_argv(speculation: Speculation) -> list[str]:
    """The flags of this module's command line that carry `speculation` ([] when off)."""
    if not speculation.enabled:
        return []
    argv = ["--speculative", speculation.mode]
    for flag, value in (
        ("--spec-ngram-size", speculation.ngram_size),
        ("--spec-draft-max", speculation.draft_max),
        ("--spec-draft-min", speculation.draft_min),
        ("--spec-p-min", speculation.p_min),
        ("--spec-model", speculation.model),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def _watch_parent(parent_pid: int, stop: threading.Event) -> None:
    """Set `stop` when the parent that started us is gone (it was killed without cleanup)."""
    while not stop.wait(1.0):
        if os.getppid() != parent_pid:
            stop.set()
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pullsmith.models.llama_server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ctx", type=int, default=8192, help="context tokens per slot")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--cache-ram-mib", type=int, default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--speculative", choices=SPECULATIVE_MODES, default="off")
    parser.add_argument("--spec-ngram-size", type=int, default=None)
    parser.add_argument("--spec-draft-max", type=int, default=None)
    parser.add_argument("--spec-draft-min", type=int, default=None)
    parser.add_argument("--spec-p-min", type=float, default=None)
    parser.add_argument("--spec-model", type=Path, default=None)
    args = parser.parse_args(argv)
    speculation = Speculation(
        mode=args.speculative,
        ngram_size=args.spec_ngram_size,
        draft_max=args.spec_draft_max,
        draft_min=args.spec_draft_min,
        p_min=args.spec_p_min,
        model=args.spec_model,
    )

    stop = threading.Event()
    if args.parent_pid:
        threading.Thread(
            target=_watch_parent, args=(args.parent_pid, stop), daemon=True, name="parent-watch"
        ).start()

    try:
        import xllamacpp as xlc
    except ImportError as exc:
        print(f"pullsmith-llama-server: cannot import xllamacpp: {exc}", file=sys.stderr)
        return 3

    try:
        params = build_params(
            args.model,
            args.port,
            host=args.host,
            n_ctx=args.ctx,
            threads=args.threads,
            parallel=args.parallel,
            cache_ram_mib=args.cache_ram_mib,
            speculation=speculation,
        )
    except UserError as exc:
        print(f"pullsmith-llama-server: {exc}", file=sys.stderr, flush=True)
        return 2
    started = time.monotonic()
    # SIGTERM keeps its default action (die at once) while the model loads: a Python handler
    # would only run after the blocking constructor returns.
    try:
        server = xlc.Server(params)
    except Exception as exc:  # xllamacpp raises RuntimeError("Failed to init server ...")
        print(f"pullsmith-llama-server: failed to start: {exc}", file=sys.stderr, flush=True)
        return 1

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    print(
        f"{READY_MARKER} on {server.listening_address} "
        f"(loaded in {time.monotonic() - started:.1f}s, pid {os.getpid()}, "
        f"speculative {speculation.mode})",
        file=sys.stderr,
        flush=True,
    )
    while not stop.wait(0.5):
        pass
    print("pullsmith-llama-server: stopping", file=sys.stderr, flush=True)
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
