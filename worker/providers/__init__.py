"""Tencent Cloud job-query providers: signed calls (``client``), answers in our terms
(``normalize``), the rate limit every worker shares (``ratelimit``) and the provider-wide
throttled / paused state (``state``). What each API looks like is in :mod:`worker.catalogue`."""
