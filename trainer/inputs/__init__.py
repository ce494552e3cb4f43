"""What both passes resolve from user specs: models, datasets, augmentations and tokenizers (specs:
the light checks; registry: the built-in names; models, datasets, augment, tokenizers: the things)."""
