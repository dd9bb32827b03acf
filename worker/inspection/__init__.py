"""The read queries the CLI, the service API and the metrics share (``queries``), and the
gauges read from the database at scrape time (``gauges``). Nothing here changes a job."""
