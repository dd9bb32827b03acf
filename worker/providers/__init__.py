"""Tencent Cloud job-query providers: the declarative table, signed calls, normalized answers."""
