"""kdistill: distill a large causal language model into a small, fast student.

    kdistill distill --config configs/demo.yaml

Importing kdistill registers its own model classes (the fractal student) with transformers' Auto
classes, so `AutoModelForCausalLM.from_pretrained(DIR)` loads any student kdistill saved.
"""
__version__ = "0.1.0"


def _register() -> None:
    try:
        from .students.fractal import register
    except ImportError:  # transformers missing: the CLI reports it when a command needs it
        return
    register()


_register()
