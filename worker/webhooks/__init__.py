"""Completion callbacks, without the database.

- :mod:`worker.webhooks.signing` builds a message and its Standard Webhooks headers;
- :mod:`worker.webhooks.urls` refuses unsafe callback URLs (syntax at enqueue, addresses at send);
- :mod:`worker.webhooks.transport` is the HTTP session that connects only to checked addresses;
- :mod:`worker.webhooks.send` makes one attempt and the retry policy decides the next;
- :mod:`worker.webhooks.receiver` is a verifying receiver for demos and tests.

The outbox rows, the sweep and the Celery tasks that call :func:`~worker.webhooks.send.send` live
with the database code.
"""
