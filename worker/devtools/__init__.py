"""Test and demo equipment: the fake Tencent API (``simulator``), a verifying webhook
``receiver`` and ``jobtracker demo``. Production code never imports this package; only the
``jobtracker demo`` command does, on demand (``tests/unit/test_layout.py`` guards it)."""
