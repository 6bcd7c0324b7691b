"""`kdistill design`: print LLaMA-style student candidates for a teacher and a budget, write the chosen one
as a config file (the sizing rules: kdistill/students/design.py).

    kdistill design --teacher default --compression 4 --out student.yaml
"""
from __future__ import annotations

from kdistill.base.errors import ConfigError
from kdistill.base.outputs import check_output
from kdistill.commands.args import design_arguments
from kdistill.students.design import candidates, instantiated_parameters, parse_count, student_yaml, table

add_arguments = design_arguments  # defined without torch, so `kdistill design --help` is quick


def load_teacher_config(spec: str):
    from transformers import AutoConfig

    from kdistill.base.errors import ModelError
    from kdistill.models.teacher import convert_gguf, resolve

    try:
        folder, gguf = resolve(spec)
    except ModelError as e:
        raise ModelError(str(e).replace("teacher.model:", "--teacher:", 1)) from None
    if gguf:
        folder = str(convert_gguf(folder, gguf))
    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise ModelError(f"--teacher {spec!r}: cannot read its config ({e})") from e


def main(args) -> int:
    """The `kdistill design` command: print the candidates, write the chosen one as a config file."""
    from pathlib import Path

    from kdistill.base import fsutil

    check_output(args.out, args.force)  # before the teacher's config is read
    config = load_teacher_config(args.teacher)
    teacher_params = instantiated_parameters(config)
    if args.compression is not None and args.compression <= 1:
        raise ConfigError(f"--compression {args.compression}: must be above 1 (teacher size / student size)")
    target = parse_count(args.params) if args.params else round(teacher_params / args.compression)
    found, teacher = candidates(config, target, args.context)
    teacher["parameters"] = teacher_params
    if not found:
        smallest = config.vocab_size * (getattr(config, "head_dim", None) or 64)
        raise ConfigError(f"no LLaMA-style student of about {target:,} parameters fits this teacher (the "
                          f"narrowest embedding alone has {smallest:,}); ask for more parameters or less compression")
    chosen = (args.choose or 1) - 1
    if not 0 <= chosen < len(found):
        raise ConfigError(f"--choose {args.choose}: pick 1 to {len(found)}")
    print(f"teacher {args.teacher}: {teacher_params:,} parameters; target {target:,} "
          f"({teacher_params / target:.2f}x smaller), deep-narrow first")
    print(table(found, teacher, chosen, args.context))
    command = f"kdistill design --teacher {args.teacher} " + (
        f"--params {args.params}" if args.params else f"--compression {args.compression}")
    fsutil.write_text(Path(args.out), student_yaml(found[chosen], args.teacher, teacher, command))
    print(f"wrote candidate {chosen + 1} to {args.out}: kdistill distill --config {args.out}")
    return 0

