"""The configuration of `python -m jobs.make_student`: a student cut from its teacher by depth.

Light on purpose (no torch), so `--help` and a refused config load nothing heavy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from trainer.inputs import specs
from trainer.options import check_out_dir, option, required_problems


@dataclass
class MakeStudentConfig:
    """Make a student from its teacher: the teacher's decoder layers that matter most on calibration
    text (their block influence, as ShortGPT measures it), with the teacher's embeddings, output layer,
    tokenizer and chat template, saved with save_pretrained for --student hf:DIR. Heal it with
    train_student from the teacher's store."""

    teacher: str = option(
        "the teacher to cut: hf:DIR, a decoder-only causal LM saved with save_pretrained", "", required=True
    )
    out: str = option("directory the student is saved to (save_pretrained)", "", required=True)
    depth: int = option("decoder layers the student keeps, those of highest importance on --calibration", 0)
    keep_layers: str = option(
        "instead of --depth: the teacher's layers the student keeps, 0-based and comma-separated (e.g. 0,2,4,29)", ""
    )
    calibration: str = option(
        "with --depth: the text the layers' importance is measured on, text files as --dataset takes them "
        "(JSONL/JSON/Parquet chat, prompt/completion or plain text, or a datasets directory), tokenised with the "
        "teacher's tokenizer and chat template",
        "",
    )
    calibration_rows: int = option("rows of --calibration used (the first ones by id)", 128)
    seq_len: int = option("tokens per calibration row (longer rows keep their beginning)", 256)
    overwrite: bool = option("replace a student already at --out", False)

    def validate(self) -> list[str]:
        problems = required_problems(self)
        if self.teacher and not self.teacher.startswith(specs.HF_PREFIX):
            problems.append(f"--teacher {self.teacher!r}: a student is cut from an hf:DIR teacher (save_pretrained)")
        elif self.teacher:
            problems += specs.check_model_spec(self.teacher, "--teacher")
        if bool(self.depth) == bool(self.keep_layers):
            problems.append("pass either --depth N (layers chosen on --calibration) or --keep-layers I,J,...")
        if self.depth < 0:
            problems.append(f"--depth must be >= 1, got {self.depth}")
        problems += self._keep_layers_problems()
        if self.depth and not self.calibration:
            problems.append("--depth needs --calibration: text the layers' importance is measured on")
        if self.calibration:
            problems += specs.check_dataset_spec(self.calibration, "--calibration")
        if self.calibration_rows < 1:
            problems.append(f"--calibration-rows must be >= 1, got {self.calibration_rows}")
        if self.seq_len < 2:
            problems.append(f"--seq-len must be >= 2, got {self.seq_len}")
        if self.out:
            problems += check_out_dir(self.out, "--out")
        return problems

    def _keep_layers_problems(self) -> list[str]:
        if not self.keep_layers:
            return []
        try:
            layers = self.layers()
        except ValueError:
            return [f"--keep-layers {self.keep_layers!r}: expected comma-separated layer numbers, e.g. 0,2,4"]
        if not layers:
            return [f"--keep-layers {self.keep_layers!r} names no layer"]
        if min(layers) < 0:
            return [f"--keep-layers {self.keep_layers!r}: layer numbers start at 0"]
        if len(set(layers)) != len(layers):
            return [f"--keep-layers {self.keep_layers!r} names a layer twice"]
        return []

    def layers(self) -> list[int]:
        """--keep-layers as numbers, in the teacher's order (ValueError if one is not a number)."""
        return sorted(int(part) for part in self.keep_layers.split(",") if part.strip())

    def to_dict(self) -> dict:
        return asdict(self)
