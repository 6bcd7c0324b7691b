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
        from kdistill.students.fractal import register
    except ImportError:  # transformers missing: the CLI reports it when a command needs it
        return
    register()


def __getattr__(name: str):
    if name in ("distill", "evaluate", "export", "load_config", "Config"):
        from kdistill import api

        return getattr(api, name)
    raise AttributeError(f"module 'kdistill' has no attribute {name!r}")


class _CallableModule(_types.ModuleType):
    """`kdistill.export` is a package as well as an API function: once the package is imported,
    `from kdistill import export` gives the package, so calling it calls the function."""

    def __call__(self, *args, **kwargs):
        from kdistill import api

        return getattr(api, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


def _install() -> None:
    from kdistill.base.lazy import after_import

    after_import("transformers", _register)
    after_import("kdistill.export", lambda: setattr(_sys.modules["kdistill.export"], "__class__", _CallableModule))


_install()
