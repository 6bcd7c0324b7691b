"""`kdistill cache`: write a teacher cache from a config, or `--inspect DIR` one.

    kdistill cache --config configs/demo.yaml cache.out=runs/cache cache.k=50
    kdistill cache --config configs/demo.yaml cache.out=runs/cache cache.mode=sampled cache.samples=32
    kdistill cache --inspect runs/cache
"""
from __future__ import annotations

from kdistill import api


def add_arguments(p) -> None:
    p.add_argument("--config", help="YAML file stating what differs from the defaults (teacher, data, cache.*)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--overwrite", action="store_true", help="replace a cache (of other settings) in cache.out")
    p.add_argument("--inspect", metavar="DIR", help="print what the cache in DIR holds (and verify it)")


def main(args) -> int:
    if args.inspect:
        from kdistill.cache.inspect import format_summary

        print(format_summary(args.inspect, api.inspect_cache(args.inspect)))
        return 0
    cfg = api.load_config(args.config, args.overrides)
    manifest = api.cache(cfg, overwrite=args.overwrite)
    s = manifest["stats"]
    print(f"wrote {cfg.cache.out}: {len(manifest['shards'])} shards, {manifest['data']['positions']:,} positions, "
          f"{s['bytes_per_token']:.1f} bytes/token, captured mass {s['captured_mass']:.4f}"
          + (f", KL(teacher ‖ stored) {s['kl_stored']:.5f} nats/token" if "kl_stored" in s else "")
          + f"\ntrain from it: kdistill distill ... teacher.cache={cfg.cache.out}", flush=True)
    return 0
