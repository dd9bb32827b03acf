"""Observability, a leaf every layer may use: Prometheus counters and histograms (``metrics``)
and log formatting with a job's context (``logs``). Nothing here reads the database or imports
the flow; the gauges read from the database at scrape time are in :mod:`worker.inspection`."""
