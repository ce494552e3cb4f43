"""The student pass (jobs.train_student, jobs.sweep): its config, the join of data and store in the
epoch's order, batches and their teacher targets, the losses, the students and their loop, the Ray
Train run and sweeps. It never imports the teacher pass, and never runs a teacher."""
