"""The read side: what is in the spool, counted, listed and charted, changing nothing.

`listing` (spool ls), `paging` (pages of big directories), `status` (spool status),
`throughput` (the chart's samples), `metrics` (Prometheus text), `top` (spool top).
"""
