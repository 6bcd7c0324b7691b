"""Offline distillation: the teacher's signal over the data, written once, trained from many times.

    kdistill cache --config configs/demo.yaml cache.out=runs/cache cache.k=50   # writes the cache
    kdistill cache --inspect runs/cache                                        # what is inside
    kdistill distill --config configs/demo.yaml teacher.cache=runs/cache       # trains without the teacher

A cache folder holds `manifest.json` (see `manifest`), shards `shard-NNNNN.safetensors` (see `shard`,
encoded by `codec` with the bit streams of `bits`), the tokenizer (`tokenizer/`) and the teacher's
config (`teacher_config.json`). Two modes: `topk` stores per position the k most likely ids with their
probabilities and the mass outside them (missing_mass=residual uses exactly that mass); `sampled` stores
ids drawn from the teacher with their counts (random-sampling KD: counts / samples is unbiased for the
teacher's distribution). `writer` runs the teacher, `reader` verifies and decodes, `inspect` prints a summary;
`kdistill distill` trains from a cache through `kdistill.sources.cached.CacheSource`.
"""
