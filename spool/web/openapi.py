"""The OpenAPI 3.1 document of the JSON API that `spool web` serves (GET /openapi.json)."""

from __future__ import annotations

from typing import Any

from spool import __version__


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": answer("Invalid request (body, field, parameter)", ref("Error")),
    "401": answer("Missing or wrong bearer token", ref("Error")),
    "403": answer("No token configured on the server: changes are refused", ref("Error")),
    "404": answer("Unknown task id or queue", ref("Error")),
}
SECURED: list[dict[str, list[str]]] = [{"bearer": []}]
TASK_ID = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
BATCH_ID = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}}
QUEUE = {"name": "queue", "in": "path", "required": True, "schema": {"type": "string"}}


def query(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": {"type": "string"}, "description": description}


def paths() -> dict[str, Any]:
    return {
        "/api/tasks": {
            "post": {
                "summary": "Enqueue one task or a list of tasks (durable before the answer)",
                "security": SECURED,
                "parameters": [query("queue", "Queue for tasks without a 'queue' field")],
                "requestBody": json_body(
                    {"oneOf": [ref("Task"), {"type": "array", "items": ref("Task")}]}
                ),
                "responses": {
                    "202": answer("Enqueued", ref("Enqueued")),
                    "413": answer("Body larger than [web] max_body", ref("Error")),
                    "507": answer(
                        "The spool's disk is full, over quota or failing: nothing was written",
                        ref("Error"),
                    ),
                    **ERRORS,
                },
            }
        },
        "/api/tasks/{task_id}": {
            "get": {
                "summary": "A task's file with its queue, state, result or error and history",
                "parameters": [TASK_ID],
                "responses": {"200": answer("The task", {"type": "object"}), **ERRORS},
            },
            "delete": {
                "summary": "Cancel a pending task (recorded in failed/ as Cancelled)",
                "security": SECURED,
                "parameters": [TASK_ID],
                "responses": {
                    "200": answer("Cancelled", {"type": "object"}),
                    "409": answer("The task has started or finished", ref("Error")),
                    **ERRORS,
                },
            },
        },
        "/api/tasks/{task_id}/retry": {
            "post": {
                "summary": "Move a failed task back to incoming/ with attempts reset",
                "security": SECURED,
                "parameters": [TASK_ID],
                "responses": {
                    "200": answer("Retried", {"type": "object"}),
                    "409": answer("The task is not in failed/", ref("Error")),
                    **ERRORS,
                },
            }
        },
        "/api/batches": {
            "post": {
                "summary": "Enqueue tasks as one batch whose callbacks (then: all done; "
                "on_failure: all ended, some failed; finally: either) run once when every "
                "member has ended",
                "security": SECURED,
                "requestBody": json_body(
                    {
                        "type": "object",
                        "required": ["tasks"],
                        "properties": {
                            "tasks": {"type": "array", "items": ref("Task")},
                            "then": {},
                            "on_failure": {},
                            "finally": {},
                            "id": {"type": "string"},
                        },
                    }
                ),
                "responses": {
                    "202": answer("Enqueued", {"type": "object"}),
                    "409": answer("A batch of this id exists", ref("Error")),
                    "422": answer("Refused by the published tasks", ref("Error")),
                    **ERRORS,
                },
            }
        },
        "/api/batches/{batch_id}": {
            "get": {
                "summary": "A batch's progress: total, done, failed, pending, its callbacks' ids",
                "parameters": [BATCH_ID],
                "responses": {
                    "200": answer("The batch", {"type": "object"}),
                    "404": answer("Unknown batch id", ref("Error")),
                },
            }
        },
        "/api/queues": {
            "get": {
                "summary": "Per queue: depth per state, oldest waiting age, paused, finished per "
                "minute over the last hour; live workers and what each runs",
                "responses": {"200": answer("The spool's status", {"type": "object"})},
            }
        },
        "/api/queues/{queue}/tasks": {
            "get": {
                "summary": "One page of a queue's tasks in one state",
                "parameters": [
                    QUEUE,
                    query("state", "incoming (default), delayed, processing, done or failed"),
                    query("task", "Only tasks of this name"),
                    query("since", "Only entries at most this old (30s, 5m, 1h, 7d)"),
                    query("older_than", "Only entries at least this old"),
                    query("after", "The next_after of the previous page"),
                    query("limit", "Rows per page, 1-500 (default 50)"),
                ],
                "responses": {"200": answer("A page", ref("Page")), **ERRORS},
            }
        },
        "/api/queues/{queue}/pause": {
            "post": {
                "summary": "Pause a queue: workers claim nothing from it until resumed",
                "security": SECURED,
                "parameters": [QUEUE],
                "requestBody": json_body(
                    {"type": "object", "properties": {"reason": {"type": "string"}}}, False
                ),
                "responses": {"200": answer("Paused", {"type": "object"}), **ERRORS},
            }
        },
        "/api/queues/{queue}/resume": {
            "post": {
                "summary": "Resume a paused queue",
                "security": SECURED,
                "parameters": [QUEUE],
                "responses": {"200": answer("Resumed", {"type": "object"}), **ERRORS},
            }
        },
        "/api/queues/{queue}/purge": {
            "post": {
                "summary": "Delete finished tasks of a queue (optionally only older ones)",
                "security": SECURED,
                "parameters": [QUEUE],
                "requestBody": json_body(
                    {
                        "type": "object",
                        "required": ["state"],
                        "properties": {
                            "state": {"enum": ["done", "failed"]},
                            "older_than": {"type": "string", "examples": ["7d"]},
                        },
                    }
                ),
                "responses": {"200": answer("Purged", {"type": "object"}), **ERRORS},
            }
        },
        "/api/queues/{queue}/failures": {
            "get": {
                "summary": "The queue's failed tasks grouped by task and error type, "
                "the biggest group first (cancelled tasks left out)",
                "parameters": [QUEUE],
                "responses": {"200": answer("Groups", {"type": "object"}), **ERRORS},
            }
        },
        "/api/queues/{queue}/retry": {
            "post": {
                "summary": "Retry every failed task of one group: a task name and an error type",
                "security": SECURED,
                "parameters": [QUEUE],
                "requestBody": json_body(
                    {
                        "type": "object",
                        "required": ["task", "error_type"],
                        "properties": {
                            "task": {"type": "string"},
                            "error_type": {"type": "string", "examples": ["TimeoutError"]},
                        },
                    }
                ),
                "responses": {"200": answer("Retried", {"type": "object"}), **ERRORS},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text (as `spool metrics`)",
                "responses": {"200": {"description": "Metrics", "content": {"text/plain": {}}}},
            }
        },
    }


def schemas() -> dict[str, Any]:
    return {
        "Task": {
            "type": "object",
            "required": ["task"],
            "properties": {
                "task": {"type": "string"},
                "args": {"type": "array"},
                "kwargs": {"type": "object"},
                "queue": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "id": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
                "priority": {"type": "integer", "minimum": 0, "maximum": 9},
                "delay": {"type": "number", "minimum": 0},
                "not_before": {"type": ["string", "number"]},
                "max_retries": {"type": "integer", "minimum": 0},
                "timeout": {"type": "number", "exclusiveMinimum": 0},
                "unique_key": {"type": "string"},
            },
        },
        "Enqueued": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "description": "Only for a single task"},
                "ids": {"type": "array", "items": {"type": "string"}},
            },
        },
        "Page": {
            "type": "object",
            "properties": {
                "tasks": {"type": "array", "items": {"type": "object"}},
                "next_after": {"type": ["string", "null"]},
                "scan_cut": {"type": "boolean"},
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "spool web",
            "version": __version__,
            "description": "Enqueue and manage spool tasks over HTTP. Requests that change "
            "anything need Authorization: Bearer <token>.",
        },
        "paths": paths(),
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
