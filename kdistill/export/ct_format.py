"""The `quantization_config` of an int8/int4 folder, in compressed-tensors' format.

transformers reads this block of `config.json` (quant_method "compressed-tensors") and, with the
`compressed-tensors` package installed (`pip install kdistill[quant]`), loads the folder with a plain
`AutoModelForCausalLM.from_pretrained(folder)`. kdistill writes one config group per scheme, each naming
its layers exactly (compressed-tensors matches a target against the module name, or its class name,
or a `re:` pattern):

    int8  "int-quantized":  weight int8 (O, I), weight_scale (O, 1)        per output channel
    int4  "pack-quantized": weight_packed int32 (O, I / 8), weight_scale (O, I / g), weight_shape (2,)

both symmetric (no zero point). Checked against compressed-tensors 0.20.1 and transformers 5.24: there,
asymmetric int4 (packed zero points) fails to load (the checkpoint's zero points are packed, the
model's are not: "size mismatch ... ckpt (16, 2) vs model (128, 2)"), and an embedding in
"pack-quantized" fails in transformers' weight initialisation ("'Embedding' object has no attribute
'weight'"); so the vocabulary is int8 "int-quantized" and int4 is symmetric only.
"""
from __future__ import annotations

import re

from kdistill.base.errors import ModelError

FORMATS = {"int8": "int-quantized", "int4": "pack-quantized"}
CHECKED_WITH = "0.20.1"  # the compressed-tensors version these folders were tested against


def weight_args(scheme: str, group_size: int) -> dict:
    """The `weights` entry of a config group for one of kdistill's schemes."""
    int4 = scheme == "int4"
    return {"num_bits": 4 if int4 else 8, "type": "int", "symmetric": True, "dynamic": False,
            "strategy": "group" if int4 else "channel", "group_size": group_size if int4 else None}


def quantization_config(schemes: dict[str, str], group_size: int) -> dict:
    """`{module name: "int8" | "int4"}` -> the `quantization_config` block of config.json."""
    used = sorted(set(schemes.values()))
    groups = {f"group_{i}": {"targets": sorted(n for n, s in schemes.items() if s == scheme),
                             "weights": weight_args(scheme, group_size), "input_activations": None,
                             "output_activations": None, "format": FORMATS[scheme]}
              for i, scheme in enumerate(used)}
    return {"quant_method": "compressed-tensors", "format": FORMATS[used[0]] if len(used) == 1 else "mixed-precision",
            "quantization_status": "compressed", "config_groups": groups, "ignore": [],
            "kv_cache_scheme": None, "global_compression_ratio": None, "version": CHECKED_WITH}


def scheme_of(args: dict, where: str) -> tuple[str, int]:
    """A group's `weights` -> ("int8" | "int4", group size); ModelError for schemes kdistill cannot read."""
    plain = args.get("type") == "int" and args.get("symmetric", True) and not args.get("dynamic")
    if plain and args.get("num_bits") == 8 and args.get("strategy") == "channel":
        return "int8", 0
    if plain and args.get("num_bits") == 4 and args.get("strategy") == "group" and args.get("group_size"):
        return "int4", int(args["group_size"])
    raise ModelError(f"{where}: quantization_config uses {args}, which kdistill's loader does not read "
                     "(it reads symmetric int8 per channel and int4 per group); load the folder with "
                     "transformers: pip install compressed-tensors, then AutoModelForCausalLM.from_pretrained")


def matches(name: str, module, target: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == name or type(module).__name__ == target


def layer_plan(qc: dict, modules: dict, where: str) -> dict[str, tuple[str, int]]:
    """`{module name: (scheme, group size)}` for the modules of `modules` (name -> module) that `qc`'s
    config groups target and its `ignore` does not."""
    if qc.get("quant_method") != "compressed-tensors":
        raise ModelError(f"{where}: quantization_config is {qc.get('quant_method')!r}, not compressed-tensors")
    plan = {}
    for group in qc.get("config_groups", {}).values():
        scheme = scheme_of(group.get("weights") or {}, where)
        for name, module in modules.items():
            ignored = any(matches(name, module, t) for t in qc.get("ignore") or [])
            if not ignored and name not in plan and any(matches(name, module, t) for t in group["targets"]):
                plan[name] = scheme
    return plan
