"""The path of a job, one module per stage.

``enqueue`` (a row in ``tracked_jobs``) → ``tick`` (claim due rows under a lease) → ``poll`` (ask
the provider, within the shared rate limit) → ``outcome`` (what the answer means: next status,
next poll time) → ``transition`` (the only status writer: CAS UPDATE + history row + outbox row, in
one transaction) → ``outbox`` (the callback message, handed to delivery after commit) →
``deliver`` (POST it, retry it, sweep what was lost), on the threads ``dispatch`` shares between
receivers and clients, past the ``breakers`` of receivers that time out. ``leases`` is the one way
a row is claimed.
"""
