"""Command-line entry points: python -m jobs.dump_logits, python -m jobs.train_student."""
