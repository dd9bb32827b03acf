"""Tencent Cloud job-query providers: the declarative table (``table``), signed calls
(``client``), answers in our terms (``normalize``), the rate limit every worker shares
(``ratelimit``) and the provider-wide throttled / paused state (``state``)."""
