"""Workflows on files: what a task's end sets off (`ends`), follow-ups enqueued once
(`followup`), batches with callbacks (`batches`), rate limits (`rates`) and concurrency caps
(`caps`). Each holds across crashes and hosts with O_EXCL marker files and derived ids; see
docs/workflows.md."""
