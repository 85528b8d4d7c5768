"""The seeded generator of monthly data drops (synthetic subscribers, drift knobs, broken batches)."""
