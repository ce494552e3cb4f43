"""The teacher pass (jobs.dump_logits): its config, the scorer (top-k, normalisers, draws, views) and
the Ray Data pipeline that writes a store. It never imports the student."""
