"""Settings: flags > environment > ./pullsmith.toml > ~/.config/pullsmith/config.toml > defaults."""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pullsmith.errors import UserError

LOCAL_MODEL_NAME = "qwen2.5-coder-1.5b-instruct"
PROTOCOLS = ("auto", "text", "tools")
EXECUTORS = ("local", "ray")
EDIT_FORMS = ("whole-file", "replace-function", "search-replace", "apply-patch")
# Who serves a named model: "auto" (a `claude-…` name is Anthropic's, anything else an
# OpenAI-compatible server), or one of them by name.
PROVIDERS = ("auto", "openai", "anthropic")
ANTHROPIC_DEFAULT_MODEL = "claude-sonnet-4-5"
PRICE_KEYS = ("input", "cached_input", "cache_write", "output")
# Speculative decoding of the bundled model's llama.cpp server: none, drafts copied from the
# token history (prompt and reply so far) by n-gram lookup, or drafts of a small draft model.
SPECULATIVE_MODES = ("off", "ngram", "draft")
# With a task time budget (task_time_s), no attempt starts with less than this left of it.
MIN_ATTEMPT_S = 60.0
# The ranges llama.cpp's own command line accepts for these (common/arg.cpp).
_SPECULATIVE_RANGES: dict[str, tuple[float, float]] = {
    "speculative_ngram_size": (1, 1024),
    "speculative_draft_max": (1, 1024),
    "speculative_draft_min": (0, 1024),
    "speculative_p_min": (0.0, 1.0),
}


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def data_dir() -> Path:
    return _xdg("XDG_DATA_HOME", ".local/share") / "pullsmith"


def cache_dir() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache") / "pullsmith"


def user_config_path() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / "pullsmith" / "config.toml"


SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Environment:
    """A repository's environment: a setup command run once per attempt before the agent.

    The setup command runs in the sandbox on the fresh worktree with the network when `network`
    is set and with `secrets` (name, value) in its environment; then the agent, and pullsmith's
    own test runs, go on with the network off and no secrets. What setup leaves in the worktree
    (a virtualenv, a build directory) is kept out of the attempt's diff and commit.
    """

    setup: str
    network: bool = False
    secrets: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    timeout_s: float = 600.0

    @property
    def secret_names(self) -> list[str]:
        return [name for name, _ in self.secrets]

    def redact(self, text: str) -> str:
        """`text` with every secret's value replaced by its name."""
        for name, value in self.secrets:
            if value:
                text = text.replace(value, f"[secret {name}]")
        return text


MCP_SERVER_KEYS = (
    "command",
    "args",
    "env",
    "cwd",
    "enabled_tools",
    "startup_timeout",
    "call_timeout",
    "trusted",
)
# A server's name becomes part of its tools' native names (`mcp__NAME__TOOL`), which the
# model APIs allow only letters, digits, `_` and `-` in.
MCP_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class McpServer:
    """An MCP server from the config (`[mcp_servers.NAME]`), started over stdio for each run.

    It runs inside the run's sandbox, with the agent's policy and its environment scrubbed
    (plus `env`), unless `trusted` is set: then it runs on this machine as the user, as other
    agents run their MCP servers. `cwd` defaults to the run's workspace; `enabled_tools`
    (None: every tool) picks the tools the model is offered.
    """

    name: str
    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    cwd: str | None = None
    enabled_tools: tuple[str, ...] | None = None
    startup_timeout_s: float = 10.0
    call_timeout_s: float = 60.0
    trusted: bool = False


@dataclass(frozen=True)
class PriceSetting:
    """A price from the config (`[prices."PATTERN"]`): US dollars per million tokens.

    `pattern` is an fnmatch pattern (or a plain name) matched against the lower-cased model
    name; config rows are looked at before the shipped table (models/prices.toml).
    """

    pattern: str
    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None


@dataclass(frozen=True)
class Speculation:
    """How the bundled model's llama.cpp server drafts tokens ahead (speculative decoding).

    `mode` "off"; "ngram": when the last `ngram_size` tokens occurred earlier in the context
    (prompt or reply), the `draft_max` tokens that followed them there are the draft (llama.cpp's
    ngram-simple, no extra model: made for replies that copy the prompt, as whole-file rewrites
    do); "draft": a small `model` with the same vocabulary drafts up to `draft_max` tokens,
    at least `draft_min`, stopping below probability `p_min` (llama.cpp's draft-simple). The
    target model verifies every draft in one batch, so what is generated does not change. None
    leaves llama.cpp's default.
    """

    mode: str = "off"
    ngram_size: int | None = None
    draft_max: int | None = None
    draft_min: int | None = None
    p_min: float | None = None
    model: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def check(self, source: str = "the settings") -> Speculation:
        """This speculation, or UserError with one sentence on what is wrong with it."""
        if self.mode not in SPECULATIVE_MODES:
            raise UserError(
                f"setting 'speculative' in {source} must be off, ngram or draft, not "
                f"{self.mode!r}; fix it there."
            )
        values = {
            "speculative_ngram_size": self.ngram_size,
            "speculative_draft_max": self.draft_max,
            "speculative_draft_min": self.draft_min,
            "speculative_p_min": self.p_min,
        }
        for name, value in values.items():
            if value is not None:
                _check_range(name, value, source)
        if self.mode == "draft" and self.model is None:
            raise UserError(
                f"setting 'speculative' in {source} is draft but no draft model is set; set "
                "speculative_model to a small GGUF with the bundled model's vocabulary (a "
                'Qwen2.5 0.5B), or use speculative = "ngram", which needs none.'
            )
        if (
            self.mode == "draft"
            and self.draft_min is not None
            and self.draft_max is not None
            and self.draft_min > self.draft_max
        ):
            raise UserError(
                f"setting 'speculative_draft_min' in {source} ({self.draft_min}) is above "
                f"speculative_draft_max ({self.draft_max}); lower it or raise the maximum."
            )
        return self


def _check_range(name: str, value: float, source: str) -> None:
    low, high = _SPECULATIVE_RANGES[name]
    if isinstance(value, bool) or not low <= value <= high:
        label = "a number" if isinstance(low, float) else "a whole number"
        raise UserError(
            f"setting '{name}' in {source} must be {label} from {low:g} to {high:g}, not "
            f"{value!r}; fix it there."
        )


@dataclass(frozen=True)
class Settings:
    """Everything that shapes a run besides the task itself."""

    model: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    # "auto", "openai" or "anthropic" (see PROVIDERS); the key of the Anthropic API
    # ($ANTHROPIC_API_KEY), kept apart from the OpenAI-compatible one.
    provider: str = "auto"
    anthropic_api_key: str | None = field(default=None, repr=False)
    # End a task when what its model calls cost reaches this many US dollars (every attempt
    # of best-of-N counted); None: no limit. Needs a price for the model.
    max_cost: float | None = None
    # Prices from the config, looked at before the shipped table (pullsmith.models.prices).
    prices: tuple[PriceSetting, ...] = ()
    # How the model sends commands: "text" (```bash blocks), "tools" (native tool calls) or
    # "auto" (the model's profile in pullsmith.models.profiles decides).
    protocol: str = "auto"
    # The edit forms the prompt teaches, preferred first, comma-separated (see EDIT_FORMS), or
    # "auto" for the model's profile.
    edit_forms: str = "auto"
    sandbox: str = "bwrap"
    # What sandboxed commands may do: read-only, workspace-write or full-access.
    sandbox_policy: str = "workspace-write"
    # The image of the docker and podman sandboxes; never pulled by pullsmith.
    sandbox_image: str = "python:3.11-slim"
    # Limits on every sandboxed command (0 turns one off); see pullsmith.sandbox.limits.
    sandbox_memory_mb: int = 4096
    sandbox_processes: int = 512
    sandbox_file_size_mb: int = 1024
    sandbox_cpu_s: int = 600
    sandbox_output_kb: int = 64
    # "auto" (a cgroup per command where this machine allows one), "off", or a delegated
    # cgroup v2 directory to make them in.
    sandbox_cgroup: str = "auto"
    max_turns: int = 20
    max_time_s: float = 1200.0
    # The whole task's time budget in seconds, every attempt counted (0: none): an attempt is
    # not started with less than MIN_ATTEMPT_S of it left, and the agent's turns stop when it is
    # used up (the test runs after them still run). With the ray executor each attempt is a
    # task of its own, so there it bounds each attempt.
    task_time_s: float = 0.0
    max_tokens: int = 400_000
    command_timeout_s: float = 120.0
    # pullsmith's own runs of the repository's tests (before, after each edit, after).
    test_timeout_s: float = 300.0
    # ... and within that, each of an attempt's own test runs (before the agent, after each
    # edit, in the diff shrink): a process of the run that has used `test_cpu_s` seconds of CPU
    # time (three times that before the agent; later, at least twice what that run used and
    # 5 s more: Attempt.cpu_cap) is stopped (RLIMIT_CPU: a test that loops forever costs that,
    # not minutes, and a loaded machine that only stretches the wall clock does not stop a
    # passing suite), and
    # the run ends after `feedback_test_timeout_s` seconds of wall clock (a hang that sleeps or
    # waits for input; three times that for the check of a finish and the run after the agent,
    # whose verdicts decide the status); 0 turns either off.
    test_cpu_s: float = 20.0
    feedback_test_timeout_s: float = 120.0
    # pytest only (PYTEST_TIMEOUT and PYTEST_ADDOPTS in the sandbox, which other runners
    # ignore): a test running longer (wall clock) fails (pytest-timeout, where the sandbox's
    # Python has it) or has its stack dumped (faulthandler, at 1.5 times this); 0: off.
    pytest_timeout_s: float = 30.0
    # pytest plugins of the sandbox's Python (pullsmith's own environment) that pytest in the
    # sandbox does not load: schemathesis and hypothesis's plugin are pullsmith's test tools,
    # and importing them tripled the CPU time of every pytest start (1.1 s against 0.38 s);
    # hypothesis itself still works without its plugin.
    pytest_skip_plugins: str = "schemathesis,hypothesispytest"
    # Before committing, drop each hunk of the diff whose revert keeps the visible tests
    # passing (at most `shrink_max_runs` test runs, `shrink_max_s` seconds); see shrink.py.
    shrink_diff: bool = True
    shrink_max_runs: int = 8
    shrink_max_s: float = 90.0
    # After the final diff is known, ask the model once more for the summary of the commit and
    # the PR, with that diff and the test results in front of it (off: the finish summary).
    summary_from_diff: bool = True
    # The first message shows the functions localize.rank_functions ranks first for the
    # failing tests (off: the files of the tracebacks and what they import, as before).
    localize: bool = True
    # With --until-pass, each later attempt is told what the earlier ones changed and that
    # the tests still failed (off: every attempt gets the same first message).
    retry_account: bool = True
    # Before the agent's turns (text protocol, a failing test run understood): ask the model
    # for each of the first `repair_candidates` functions localize ranks, one at a time, fixed,
    # and keep the first change the tests pass (agent/repair.py), for at most
    # `repair_max_s` seconds from its first reply's first piece. A function's first ask is at
    # the attempt's temperature, its later ones (agent/repair.py's ask_order) at
    # `repair_temperature`, up to `repair_samples` asks of a function in all. A function over
    # `repair_lines_over` lines is asked for a SEARCH/REPLACE block of the lines to change,
    # not written whole (0: every function whole).
    repair: bool = True
    repair_candidates: int = 5
    repair_max_s: float = 240.0
    repair_samples: int = 3
    repair_temperature: float = 0.7
    repair_lines_over: int = 30
    temperature: float = 0.2
    seed: int | None = None
    max_reply_tokens: int = 2048
    test_command: str | None = None
    finish_retries: int = 2
    format_error_limit: int = 3
    n_ctx: int = 8192
    # The context window of an API model, in tokens (the bundled model's is n_ctx); None:
    # unknown, so the run never compacts or stops for it and the provider says when it is full.
    context_window: int | None = None
    # Near the context window, compact the older turns into a summary the model writes
    # instead of stopping (see pullsmith.agent.compaction).
    compact: bool = True
    threads: int = 2
    port: int | None = None
    # Speculative decoding of the bundled model's server (see Speculation): "off", "ngram" or
    # "draft" (with `speculative_model`, a draft GGUF). ngram by default: measured 1.63x the
    # generation speed of a whole-file rewrite with the same text, no change on a short reply
    # (benchmarks/results/speculative.md). The other speculative_* keys tune it; unset,
    # llama.cpp's defaults apply (ngram 12 and 48).
    speculative: str = "ngram"
    speculative_ngram_size: int | None = None
    speculative_draft_max: int | None = None
    speculative_draft_min: int | None = None
    speculative_p_min: float | None = None
    speculative_model: Path | None = None
    # The bundled model is already served at this OpenAI base URL (`http://127.0.0.1:PORT/v1`,
    # say by the parent of a pool of workers, see pullsmith.models.local.serve_shared): use it,
    # never start or stop a server.
    local_server_url: str | None = None
    data_dir: Path = field(default_factory=data_dir)
    database_url: str | None = field(default=None, repr=False)
    github_api_url: str | None = None
    github_repo: str | None = None
    # Where tasks run: "local" (threads or worker processes of this machine) or "ray" (one Ray
    # task per attempt on the cluster at `ray_address`: "auto", "host:port" of its head, or
    # "ray://host:10001"; "local" starts a private Ray instance on this machine). The Ray
    # resources each attempt asks for cap how many run at once on a node; a Ray worker that
    # dies is retried `ray_max_retries` times.
    executor: str = "local"
    ray_address: str = "auto"
    ray_num_cpus: float = 1.0
    ray_memory_mb: int = 1024
    ray_max_retries: int = 2
    # The configuration files these settings were read from (load_settings fills it in); the
    # agent's sandbox hides them, since they may hold API keys.
    config_files: tuple[Path, ...] = ()
    # The repository's environment (`[environment]` in pullsmith.toml, or the service's
    # environment for the task's repository): a setup command before the agent, or None.
    environment: Environment | None = None
    # The MCP servers whose tools the model is offered (`[mcp_servers.NAME]`, see McpServer).
    mcp_servers: tuple[McpServer, ...] = ()
    # Stream each model reply to the listeners as it is generated (`model.delta` events, never
    # written to the log). Set by the interactive session for its own runs; not a config key.
    stream_replies: bool = False

    @property
    def uses_local_model(self) -> bool:
        """The bundled model runs when nothing points at an API and no run is replayed.

        It stays True with `local_server_url`: the bundled model still answers (and its context
        limit still applies); only someone else serves it.
        """
        if self.model and self.model.startswith("replay:"):
            return False
        if self.provider_name == "anthropic":
            return False
        return self.base_url is None and self.api_key is None

    @property
    def provider_name(self) -> str:
        """Who answers: "replay", "anthropic", "openai" (any compatible server) or "local"."""
        if self.model and self.model.startswith("replay:"):
            return "replay"
        if self.provider == "anthropic" or (
            self.provider == "auto" and (self.model or "").lower().startswith("claude-")
        ):
            return "anthropic"
        if self.provider == "openai":
            return "openai"
        return "local" if self.base_url is None and self.api_key is None else "openai"

    @property
    def model_name(self) -> str:
        if self.model:
            return self.model
        if self.provider == "anthropic":
            return ANTHROPIC_DEFAULT_MODEL
        return LOCAL_MODEL_NAME if self.uses_local_model else "gpt-4.1-mini"

    @property
    def speculation(self) -> Speculation:
        """The speculative decoding the bundled model's server is started with."""
        return Speculation(
            mode=self.speculative,
            ngram_size=self.speculative_ngram_size,
            draft_max=self.speculative_draft_max,
            draft_min=self.speculative_draft_min,
            p_min=self.speculative_p_min,
            model=self.speculative_model,
        )

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def worktrees_dir(self) -> Path:
        return self.data_dir / "worktrees"


_FIELD_TYPES = {
    f.name: f.type
    for f in fields(Settings)
    if f.name not in ("config_files", "environment", "prices", "mcp_servers", "stream_replies")
}
ENVIRONMENT_KEYS = ("setup", "network", "secrets", "timeout")

_ENV_VARS = {
    "OPENAI_API_KEY": "api_key",
    "OPENAI_BASE_URL": "base_url",
    "ANTHROPIC_API_KEY": "anthropic_api_key",
    "PULLSMITH_PROVIDER": "provider",
    "PULLSMITH_MAX_COST": "max_cost",
    "PULLSMITH_MODEL": "model",
    "PULLSMITH_PROTOCOL": "protocol",
    "PULLSMITH_EDIT_FORMS": "edit_forms",
    "PULLSMITH_SANDBOX": "sandbox",
    "PULLSMITH_SANDBOX_POLICY": "sandbox_policy",
    "PULLSMITH_SANDBOX_IMAGE": "sandbox_image",
    "PULLSMITH_MAX_TURNS": "max_turns",
    "PULLSMITH_TEST_COMMAND": "test_command",
    "PULLSMITH_DATA_DIR": "data_dir",
    "PULLSMITH_THREADS": "threads",
    "PULLSMITH_SPECULATIVE": "speculative",
    "PULLSMITH_LOCAL_SERVER_URL": "local_server_url",
    "PULLSMITH_DATABASE_URL": "database_url",
    "PULLSMITH_GITHUB_API_URL": "github_api_url",
    "PULLSMITH_GITHUB_REPO": "github_repo",
    "PULLSMITH_EXECUTOR": "executor",
    "PULLSMITH_RAY_ADDRESS": "ray_address",
    "PULLSMITH_SHRINK_DIFF": "shrink_diff",
    "PULLSMITH_SUMMARY_FROM_DIFF": "summary_from_diff",
    "PULLSMITH_LOCALIZE": "localize",
    "PULLSMITH_RETRY_ACCOUNT": "retry_account",
    "PULLSMITH_REPAIR": "repair",
    "PULLSMITH_TASK_TIME": "task_time_s",
}


def _boolean(name: str, value: Any, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise UserError(
        f"setting '{name}' in {source} must be true or false, not {value!r}; fix it there."
    )


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = str(_FIELD_TYPES[name])
    if name == "executor" and value not in EXECUTORS:
        raise UserError(
            f"setting 'executor' in {source} must be local or ray, not {value!r}; fix it there."
        )
    if name == "provider" and value not in PROVIDERS:
        raise UserError(
            f"setting 'provider' in {source} must be auto, openai or anthropic, not {value!r}; "
            "fix it there."
        )
    if name == "max_cost":
        return _max_cost(value, source)
    if name == "speculative":
        text = "off" if value is False else str(value).strip().lower()
        if text not in SPECULATIVE_MODES:
            raise UserError(
                f"setting 'speculative' in {source} must be off, ngram or draft, not {value!r}; "
                "fix it there."
            )
        return text
    if name == "protocol" and value not in PROTOCOLS:
        raise UserError(
            f"setting 'protocol' in {source} must be auto, text or tools, not {value!r}; fix it there."
        )
    if name == "edit_forms" and value != "auto":
        forms = [form.strip() for form in str(value).split(",") if form.strip()]
        unknown = [form for form in forms if form not in EDIT_FORMS]
        if unknown or not forms:
            raise UserError(
                f"setting 'edit_forms' in {source} must be auto or a comma-separated list of "
                f"{', '.join(EDIT_FORMS)}, not {value!r}; fix it there."
            )
        return ",".join(forms)
    if "bool" in kind:
        return _boolean(name, value, source)
    if name in _SPECULATIVE_RANGES:
        return _speculative_number(name, value, source)
    try:
        if "int" in kind:
            return int(value)
        if "float" in kind:
            return float(value)
        if "Path" in kind:
            return Path(os.path.expanduser(str(value)))
        return str(value)
    except (TypeError, ValueError):
        label = "a whole number" if "int" in kind else "a number"
        raise UserError(
            f"setting '{name}' in {source} must be {label}, not {value!r}; fix it there."
        ) from None


def _speculative_number(name: str, value: Any, source: str) -> float:
    low, high = _SPECULATIVE_RANGES[name]
    whole = isinstance(low, int)
    number: float | None = None
    if not isinstance(value, bool) and not (whole and isinstance(value, float)):
        with contextlib.suppress(TypeError, ValueError):
            number = int(value) if whole else float(value)
    if number is None:
        label = "a whole number" if whole else "a number"
        raise UserError(
            f"setting '{name}' in {source} must be {label} from {low:g} to {high:g}, not "
            f"{value!r}; fix it there."
        )
    _check_range(name, number, source)
    return number


def _max_cost(value: Any, source: str) -> float:
    try:
        cost = float(value)
    except (TypeError, ValueError):
        cost = -1.0
    if isinstance(value, bool) or not cost > 0 or cost == float("inf"):
        raise UserError(
            f"setting 'max_cost' in {source} must be a positive number of US dollars, "
            f"not {value!r}; fix it there."
        )
    return cost


def prices_from_table(table: Any, source: str) -> tuple[PriceSetting, ...]:
    """The `[prices."PATTERN"]` tables of a config file: input, output and optionally
    cached_input and cache_write, each in US dollars per million tokens."""
    if not isinstance(table, dict):
        raise UserError(f"'prices' in {source} must be a table of models ([prices.\"NAME\"]).")
    rows = []
    for pattern, row in table.items():
        where = f'[prices."{pattern}"] in {source}'
        if not isinstance(row, dict):
            raise UserError(f"{where} must be a table with input and output prices.")
        unknown = sorted(set(row) - set(PRICE_KEYS))
        if unknown:
            raise UserError(
                f"{where} sets unknown key '{unknown[0]}'; valid ones are: "
                + ", ".join(PRICE_KEYS)
                + "."
            )
        for key in ("input", "output"):
            if key not in row:
                raise UserError(f"{where} needs {key} = USD per million tokens.")
        values: dict[str, float] = {}
        for key, value in row.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise UserError(
                    f"'{key}' of {where} must be a number of US dollars per million tokens, "
                    f"not {value!r}."
                )
            values[key] = float(value)
        rows.append(PriceSetting(pattern=str(pattern).strip().lower(), **values))
    return tuple(rows)


def config_table(path: Path) -> dict[str, Any]:
    """The settings table of a pullsmith.toml or config.toml (its `[pullsmith]` table, or the
    whole file), {} when there is no such file; UserError when it is not valid TOML."""
    if not path.is_file():
        return {}
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid TOML ({exc}); fix or remove that file.") from None
    return dict(raw.get("pullsmith", raw))


def _from_toml(path: Path) -> dict[str, Any]:
    table = config_table(path)
    values: dict[str, Any] = {}
    if "environment" in table:
        values["environment"] = environment_from_table(table.pop("environment"), str(path))
    if "prices" in table:
        values["prices"] = prices_from_table(table.pop("prices"), str(path))
    if "mcp_servers" in table:
        values["mcp_servers"] = mcp_servers_from_table(table.pop("mcp_servers"), str(path))
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in _FIELD_TYPES:
            raise UserError(
                f"{path} sets unknown setting '{key}'; valid ones are: "
                + ", ".join(sorted(_FIELD_TYPES))
                + "."
            )
        values[name] = _coerce(name, value, str(path))
    return values


def environment_from_table(
    table: Any, source: str, environ: dict[str, str] | None = None
) -> Environment:
    """The `[environment]` table of a config file: `setup`, `network`, `secrets` (the names of
    environment variables whose values the setup command gets) and `timeout` (seconds)."""
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    if not isinstance(table, dict):
        raise UserError(f"'environment' in {source} must be a table ([environment]); fix it there.")
    unknown = sorted(set(table) - set(ENVIRONMENT_KEYS))
    if unknown:
        raise UserError(
            f"[environment] in {source} sets unknown key '{unknown[0]}'; valid ones are: "
            + ", ".join(ENVIRONMENT_KEYS)
            + "."
        )
    setup = table.get("setup")
    if not isinstance(setup, str) or not setup.strip():
        raise UserError(
            f'[environment] in {source} needs setup = "a shell command" (e.g. "pip install -e .").'
        )
    network = table.get("network", False)
    if not isinstance(network, bool):
        raise UserError(f"'network' of [environment] in {source} must be true or false.")
    names = table.get("secrets", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(
            f"'secrets' of [environment] in {source} must be a list of environment variable "
            'names, e.g. ["PIP_INDEX_TOKEN"].'
        )
    secrets = []
    for name in names:
        if not SECRET_NAME.match(name):
            raise UserError(
                f"secret name {name!r} in {source} is not an environment variable name; "
                "use letters, digits and underscores."
            )
        value = environ.get(name)  # type: ignore[union-attr]
        if not value:
            raise UserError(
                f"[environment] in {source} names secret {name}, but ${name} is not set; "
                "export it before starting pullsmith, or remove it from the list."
            )
        secrets.append((name, value))
    timeout = table.get("timeout", 600)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise UserError(
            f"'timeout' of [environment] in {source} must be a positive number of seconds."
        )
    return Environment(
        setup=setup.strip(), network=network, secrets=tuple(secrets), timeout_s=float(timeout)
    )


def mcp_servers_from_table(table: Any, source: str) -> tuple[McpServer, ...]:
    """The `[mcp_servers.NAME]` tables of a config file, in the order they are written."""
    if not isinstance(table, dict):
        raise UserError(
            f"'mcp_servers' in {source} must be a table of servers ([mcp_servers.NAME]); "
            "fix it there."
        )
    return tuple(_mcp_server(name, row, source) for name, row in table.items())


def _mcp_server(name: str, row: Any, source: str) -> McpServer:
    where = f"[mcp_servers.{name}] in {source}"
    if not MCP_SERVER_NAME.match(name):
        raise UserError(
            f"MCP server name {name!r} in {source} may hold only letters, digits, '_' and '-' "
            "(at most 32 characters); rename it there."
        )
    if not isinstance(row, dict):
        raise UserError(f'{where} must be a table with command = "the server\'s program".')
    unknown = sorted(set(row) - set(MCP_SERVER_KEYS))
    if unknown:
        raise UserError(
            f"{where} sets unknown key '{unknown[0]}'; valid ones are: "
            + ", ".join(MCP_SERVER_KEYS)
            + "."
        )
    command = row.get("command")
    if not isinstance(command, str) or not command.strip():
        raise UserError(f'{where} needs command = "the server\'s program" (e.g. "npx").')

    def strings(key: str) -> tuple[str, ...] | None:
        value = row.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise UserError(f"'{key}' of {where} must be a list of strings.")
        return tuple(value)

    env = row.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and SECRET_NAME.match(k) and isinstance(v, str) for k, v in env.items()
    ):
        raise UserError(
            f"'env' of {where} must be a table of environment variables and string values, "
            'e.g. env = { API_URL = "http://127.0.0.1:8080" }.'
        )
    cwd = row.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or not cwd.strip()):
        raise UserError(f"'cwd' of {where} must be the path of a directory.")
    timeouts = {}
    for key, default in (("startup_timeout", 10.0), ("call_timeout", 60.0)):
        value = row.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise UserError(f"'{key}' of {where} must be a positive number of seconds.")
        timeouts[key] = float(value)
    trusted = row.get("trusted", False)
    if not isinstance(trusted, bool):
        raise UserError(f"'trusted' of {where} must be true or false.")
    return McpServer(
        name=name,
        command=command.strip(),
        args=strings("args") or (),
        env=tuple(env.items()),
        cwd=os.path.expanduser(cwd) if cwd else None,
        enabled_tools=strings("enabled_tools"),
        startup_timeout_s=timeouts["startup_timeout"],
        call_timeout_s=timeouts["call_timeout"],
        trusted=trusted,
    )


def load_settings(overrides: dict[str, Any] | None = None, cwd: Path | None = None) -> Settings:
    """Merge every source of settings; `overrides` are command-line flags (None = not given)."""
    merged: dict[str, Any] = {}
    files = (user_config_path(), (cwd or Path.cwd()).resolve() / "pullsmith.toml")
    for path in files:
        values = _from_toml(path)
        if "prices" in values:
            # Both files' prices count, the nearer file's first (the first match wins).
            values["prices"] = values["prices"] + merged.get("prices", ())
        if "mcp_servers" in values:
            # Both files' servers run; a server of the nearer file replaces one of the same name.
            nearer = {server.name for server in values["mcp_servers"]}
            earlier = tuple(s for s in merged.get("mcp_servers", ()) if s.name not in nearer)
            values["mcp_servers"] = earlier + values["mcp_servers"]
        merged.update(values)
    merged["config_files"] = files
    for var, name in _ENV_VARS.items():
        if os.environ.get(var):
            merged[name] = _coerce(name, os.environ[var], f"${var}")
    for name, value in (overrides or {}).items():
        if value is not None:
            merged[name] = _coerce(name, value, f"--{name.replace('_', '-')}")
    settings = replace(Settings(), **merged)
    settings.speculation.check("the settings")
    return settings
