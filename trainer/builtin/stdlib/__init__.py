"""The language-model example: the standard library's sources as text (corpus), small GPTs (gpt),
their teachers and students (example), and the `bpe:N` tokenizers trained on that text (bpe)."""
