"""The torch half: the teacher pass (teacher/), the student pass (student/), what both resolve from
user specs (inputs/) and the built-in examples (builtin/, reached through inputs.registry)."""
