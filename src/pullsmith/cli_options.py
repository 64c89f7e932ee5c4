"""Command-line options that `pullsmith exec` and `pullsmith eval run` share.

Both commands choose a model the same way and run best-of-N attempts the same way; declaring
those options once keeps their names, choices and help text from drifting apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from pullsmith.config import MIN_ATTEMPT_S, Settings, load_settings

PROTOCOL_CHOICES = ["auto", "text", "tools"]


def stack_options(func: Callable[..., Any], options: list[Callable[..., Any]]) -> Any:
    for option in reversed(options):
        func = option(func)
    return func


def model_options(func: Callable[..., Any]) -> Any:
    """--model, --base-url, --protocol and --edit-forms."""
    return stack_options(
        func,
        [
            click.option(
                "--model", default=None, help="Model name (default: the bundled local model)."
            ),
            click.option("--base-url", default=None, help="OpenAI-compatible API base URL."),
            click.option(
                "--protocol",
                type=click.Choice(PROTOCOL_CHOICES),
                default=None,
                help="How the model sends commands: ```bash blocks or tool calls "
                "(default auto: by model).",
            ),
            click.option(
                "--edit-forms",
                default=None,
                metavar="FORMS",
                help="Edit forms the prompt teaches, preferred first, comma-separated: "
                "whole-file, replace-function, search-replace, apply-patch "
                "(default auto: by model).",
            ),
        ],
    )


def attempt_options(func: Callable[..., Any]) -> Any:
    """--attempts and --until-pass (best-of-N)."""
    return stack_options(
        func,
        [
            click.option(
                "--attempts",
                type=click.IntRange(min=1),
                default=1,
                show_default=True,
                help="Independent attempts, each on its own branch; the visible tests pick "
                "the best.",
            ),
            click.option(
                "--until-pass",
                is_flag=True,
                help="With --attempts, stop at the first attempt whose tests pass.",
            ),
        ],
    )


def executor_option(func: Callable[..., Any]) -> Any:
    """--executor local|ray (`pullsmith serve` and `pullsmith eval run`)."""
    return click.option(
        "--executor",
        type=click.Choice(["local", "ray"]),
        default=None,
        help="Where tasks run: worker processes here (local), or one Ray task per attempt on "
        "the cluster at ray_address (ray; needs pullsmith[ray]). Default: the executor setting.",
    )(func)


def max_cost_option(func: Callable[..., Any]) -> Any:
    """--max-cost USD (`pullsmith exec` and `pullsmith eval run`)."""
    return click.option(
        "--max-cost",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        metavar="USD",
        help="End a task cleanly once its model calls cost this many US dollars (every "
        "attempt counted; checked before each call). Needs a price for the model.",
    )(func)


def max_time_option(func: Callable[..., Any]) -> Any:
    """--max-time SECONDS (`pullsmith exec` and `pullsmith eval run`): task_time_s."""
    return click.option(
        "--max-time",
        "task_time",
        type=click.FloatRange(min=MIN_ATTEMPT_S),
        default=None,
        metavar="SECONDS",
        help="The task's time budget, every attempt counted: no attempt starts with less than "
        f"{MIN_ATTEMPT_S:g} s of it left, and the agent's turns stop when it is used up (its "
        "last test runs still run).",
    )(func)


def compact_option(func: Callable[..., Any]) -> Any:
    """--compact/--no-compact (`pullsmith exec` and `pullsmith eval run`)."""
    return click.option(
        "--compact/--no-compact",
        default=None,
        help="Near the model's context window, summarize the older turns and go on (the "
        "default), or stop with 'context window full'.",
    )(func)


def settings_from_flags(**flags: Any) -> Settings:
    """Settings from config and environment, with the flags given on the command line on top."""
    return load_settings({k: v for k, v in flags.items() if v is not None})
