"""The data's life after a job ends: retention (:mod:`.prune`) and the totals kept without
counting (:mod:`.tally`)."""
