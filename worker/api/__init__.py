"""The service API (``jobtracker api``): enqueue and query jobs over HTTP, per-client tokens.

``app`` builds the ASGI application; ``jobs``, ``deliveries`` and ``health`` are its routes;
``auth`` turns a bearer token into a client (with its scopes and rate limit, ``ratelimit``);
``body`` reads request bodies strictly; ``schemas`` declares what goes in and out (and the
OpenAPI document); ``queries`` is the database work, run on threads; ``waiting`` holds
``?wait=`` requests until their jobs end; ``observe`` counts and logs requests; ``errors`` is the
one error format; ``server`` runs it all on uvicorn.
"""
