"""Completion callbacks over HTTP, without the database.

- :mod:`worker.webhooks.signing` builds a message and its Standard Webhooks headers;
- :mod:`worker.webhooks.urls` refuses unsafe callback URLs (syntax at enqueue, addresses at send);
- :mod:`worker.webhooks.transport` is the HTTP session that connects only to checked addresses;
- :mod:`worker.webhooks.send` makes one attempt; :mod:`worker.webhooks.classify` names what went
  wrong. When to try again is :class:`worker.policy.DeliveryPolicy`'s call.

The outbox rows and their delivery live in :mod:`worker.flow.outbox` and :mod:`worker.flow.deliver`.
"""
