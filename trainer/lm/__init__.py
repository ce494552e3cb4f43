"""Language-model pieces: a small GPT, the standard-library text corpus, tokenizers, block packing."""
