"""The errors the service's API answers with: one sentence each, and the HTTP status it means."""

from __future__ import annotations

from pullsmith.errors import UserError


class ServiceError(UserError):
    """A request the service refuses; `status` is the HTTP status the API answers with."""

    status = 400


class Invalid(ServiceError):
    """The request asks for something that can not be done as sent (422)."""

    status = 422


class NotFound(ServiceError):
    """No such task or pull request (404)."""

    status = 404


class Conflict(ServiceError):
    """The request does not fit the state the task or pull request is in (409)."""

    status = 409
