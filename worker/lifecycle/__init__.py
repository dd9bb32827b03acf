"""The data's life after a job ends: the retention (:mod:`.rules` says what may go,
:mod:`.prune` removes it, :mod:`.count` is its dry run) and the totals kept without counting
(:mod:`.tally`)."""
