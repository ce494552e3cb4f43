"""The kinds of arrays a shard holds, as the backends lay them out (see logitstore/backends/__init__.py)."""

PER_SAMPLE = ("sample_id", "position_offsets", "token_offsets")
PER_TOKEN = ("input_ids", "loss_mask")
# The arrays with one entry per stored class, packed in adaptive top-k stores (FORMAT.md, version 6).
PER_ENTRY = ("topk_index", "topk_logit", "topk_index_gap_lo", "topk_index_gap_hi", "topk_code")
ENTRY_OFFSETS = "entry_offsets"
ZSTD_LEVEL = 6  # on LM teacher outputs: 2% smaller than level 3, still > 100 MB/s (bench/store.py)
