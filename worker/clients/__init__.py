"""Service API clients: their tokens and webhook secrets (``credentials``, no I/O) and the
``api_clients`` / ``api_tokens`` rows (``registry``)."""
