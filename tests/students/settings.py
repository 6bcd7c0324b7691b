"""Overrides that make a distill run on the tiny teacher take a few seconds."""
FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=12",
        "data.generate.max_new_tokens=16", "eval.max_new_tokens=3", "eval.max_batches=1",
        "train.checkpoint_every=1000", "eval.measure_speed=false"]
