#!/bin/sh
# Enqueue a task over HTTP with curl. `spool web` must run and SPOOL_WEB_TOKEN hold its token.
#   SPOOL_WEB_TOKEN=... examples/producers/curl.sh [URL]    (URL default: http://127.0.0.1:8750)
# Prints {"id": "...", "ids": ["..."]}; curl exits non-zero on an HTTP error (-f).
curl -fsS -X POST "${1:-http://127.0.0.1:8750}/api/tasks" -H "Authorization: Bearer $SPOOL_WEB_TOKEN" -H "Content-Type: application/json" -d '{"task": "echo", "args": ["hello from curl"]}'
