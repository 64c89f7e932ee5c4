"""The service: `pullsmith serve` — a REST API over a durable queue of tasks.

- `tables`: the store's `service_tasks` (the queue, and each task's state and result) and
  `service_events` (every event of every task, stored before a client is sent it).
- `queue`: `TaskService`, the scheduler that runs queued tasks on one Engine (a pool of worker
  processes, `workers`), records their ends, cancels, drains, and recovers after a crash.
- `app`: the FastAPI app (docs/api.md), with Server-Sent Events for a task's events.
- `access`: the access token and the refusal to serve the network without one chosen.
- `server`: binding, printing what it uses, uvicorn, and the drain on SIGINT/SIGTERM.
"""
