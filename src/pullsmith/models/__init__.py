"""Model providers and the choice between them."""

from __future__ import annotations

from pathlib import Path

from pullsmith.config import LOCAL_MODEL_NAME, Settings
from pullsmith.models.base import Message, Model, Reply, Usage
from pullsmith.models.openai_compat import ModelError, OpenAIModel
from pullsmith.models.replay import REPLAY_PREFIX, ReplayModel, is_replay

__all__ = [
    "Message",
    "Model",
    "ModelError",
    "OpenAIModel",
    "ReplayModel",
    "Reply",
    "Usage",
    "open_model",
]

# llama.cpp keeps the KV cache of the longest shared prefix when asked, so an append-only
# history costs only its new tokens each turn.
LLAMA_CPP_EXTRA = {"cache_prompt": True}


class ManagedLocalModel(OpenAIModel):
    """The bundled model behind a llama.cpp server that this object started and stops."""

    def __init__(self, server: object, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._server = server

    def close(self) -> None:
        super().close()
        self._server.stop()  # type: ignore[attr-defined]


def open_model(settings: Settings, log_path: Path | None = None, progress: bool = True) -> Model:
    """The model the settings ask for.

    `replay:SPEC` replays a recorded run (SPEC: a run id under `settings.runs_dir`, a run
    directory or a history.json). A `claude-…` model (or `provider = "anthropic"`) is
    Anthropic's Messages API, keyed by $ANTHROPIC_API_KEY, at `base_url` when one is set. The bundled model is used where `local_server_url` serves it,
    else from a long-lived server (`pullsmith model serve`), else assembled and served on
    demand by a server that closing the model stops.
    """
    common = {
        "temperature": settings.temperature,
        "seed": settings.seed,
        "max_reply_tokens": settings.max_reply_tokens,
    }
    if is_replay(settings.model):
        return ReplayModel(str(settings.model)[len(REPLAY_PREFIX) :], runs_dir=settings.runs_dir)
    if settings.provider_name == "anthropic":
        from pullsmith.models.anthropic import AnthropicModel

        return AnthropicModel(
            model=settings.model_name,
            api_key=settings.anthropic_api_key,
            base_url=settings.base_url,
            **common,
        )
    if not settings.uses_local_model:
        return OpenAIModel(
            model=settings.model_name,
            base_url=settings.base_url,
            api_key=settings.api_key,
            **common,
        )
    if settings.local_server_url:
        # Served by someone else (the parent of a worker pool): use it, never stop it.
        return OpenAIModel(
            model=LOCAL_MODEL_NAME,
            base_url=settings.local_server_url,
            extra_body=LLAMA_CPP_EXTRA,
            stream=True,
            **common,
        )
    from pullsmith.models.local import ensure_model, find_running_server, start_local_server

    running = find_running_server()
    if running:
        return OpenAIModel(
            model=LOCAL_MODEL_NAME,
            base_url=running,
            extra_body=LLAMA_CPP_EXTRA,
            stream=True,
            **common,
        )
    path = ensure_model(progress=progress)
    server = start_local_server(
        path,
        port=settings.port,
        n_ctx=settings.n_ctx,
        threads=settings.threads,
        log_path=log_path,
        speculation=settings.speculation,
    )
    return ManagedLocalModel(
        server,
        model=LOCAL_MODEL_NAME,
        base_url=server.base_url,
        extra_body=LLAMA_CPP_EXTRA,
        stream=True,
        **common,
    )
