"""The torch half: the teacher pass (teacher/), the student pass (student/), what both resolve from
user specs (inputs/) and the built-in examples (builtin/, reached through inputs.registry)."""

import importlib.util as _importlib_util

if _importlib_util.find_spec("vllm") is not None:  # its CPU wheel brings media libraries that break imports
    from trainer.compat import block_broken_media_libraries

    block_broken_media_libraries()
