"""What operators use: the ``jobtracker`` command line, the inspection queries behind it, their text
rendering, Prometheus metrics and log formatting. Nothing here changes a job's status."""
