"""How the process runs: the Celery app and its tasks, ``jobtracker run`` (worker + beat in one
process), the embedded broker, and the schema check at start. The tasks only wire the stages of
:mod:`worker.flow` to Celery; no flow logic lives here."""
