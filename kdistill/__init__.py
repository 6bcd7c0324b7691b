"""kdistill: distill a large causal language model into a small, fast student.

    kdistill distill --config configs/demo.yaml

    from kdistill import distill, load_config
    result = distill(load_config("configs/demo.yaml", ["train.max_steps=20"]))   # what eval.json holds

The Python API (`distill`, `evaluate`, `export`, `load_config`, `Config`; see kdistill/api.py) is imported
on first use, so `import kdistill` loads neither torch nor transformers. Once transformers is imported
(by anyone), kdistill registers its own model classes (the fractal student) with transformers' Auto
classes, so `AutoModelForCausalLM.from_pretrained(DIR)` loads any student kdistill saved.
"""
import sys as _sys
import types as _types

__version__ = "0.1.0"
__all__ = ["distill", "evaluate", "export", "load_config", "Config", "__version__"]


def _register() -> None:
    try:
        from .students.fractal import register
    except ImportError:  # transformers missing: the CLI reports it when a command needs it
        return
    register()


def __getattr__(name: str):
    if name in ("distill", "evaluate", "export", "load_config", "Config"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'kdistill' has no attribute {name!r}")


class _CallableModule(_types.ModuleType):
    """`kdistill.distill` and `kdistill.export` are modules as well as API functions: once such a module
    is imported, `from kdistill import distill` gives the module, so calling it calls the function."""

    def __call__(self, *args, **kwargs):
        from . import api

        return getattr(api, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


def _install() -> None:
    from .lazy import after_import

    after_import("transformers", _register)
    for name in ("kdistill.distill", "kdistill.export"):
        after_import(name, lambda name=name: setattr(_sys.modules[name], "__class__", _CallableModule))


_install()
