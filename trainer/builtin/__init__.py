"""The built-in examples, reached only through trainer.inputs.registry: scikit-learn's digits
(trainer.builtin.digits) and GPTs on the Python standard library's sources (trainer.builtin.stdlib),
with their models, data, teacher-training commands and cache."""
