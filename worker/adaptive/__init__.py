"""The adaptive poll schedule: learn how long each kind of job takes (``distribution``), plan when
to poll so that each call is likely to find news (``planner``), and keep the plans of each kind
fresh from the jobs that finished recently (``model``)."""
