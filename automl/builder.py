"""User networks ("builders"): resolve an import path, build, and check one before a search.

A builder is an `nn.Module` subclass or a function returning an `nn.Module`, named by an import
path: `path/to/file.py:Name` (a file, relative paths resolve against a base folder; the folder
need not be on sys.path) or `package.module:Name`. It is called with the sampled parameters as
keyword arguments, plus `input_shape` (a tuple) and `n_outputs` (an int) when its signature names
them or takes **kwargs. Torch only: no Optuna, no MLflow. Every problem is one `BuilderError` line
naming the builder.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from automl.errors import UsageError

SHAPE_ARGUMENTS = ("input_shape", "n_outputs")  # given by the tool, never sampled


class BuilderError(UsageError, ValueError):
    """A user network that cannot be imported, built or run (one line naming it and the problem)."""


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(spec: str, problem: str) -> BuilderError:
    return BuilderError(f"builder {_short(spec)}: {_short(problem, 200)}")


def split_spec(spec: str) -> tuple[str, str]:
    """(`file.py` or `package.module`, `Name`) of an import path; the last ':' separates them."""
    where, colon, name = spec.rpartition(":")
    if not colon or not where or not name:
        raise _fail(spec, "expected `file.py:Name` or `package.module:Name`")
    return where, name


def is_file_spec(where: str) -> bool:
    """Whether the module part names a file (ends with .py or holds a path separator)."""
    return where.endswith(".py") or "/" in where or "\\" in where


def absolute_spec(spec: str, base_dir: str | Path | None = None) -> str:
    """The import path with a relative file made absolute against `base_dir` (default: the cwd)."""
    where, name = split_spec(spec)
    if not is_file_spec(where):
        return spec
    path = Path(where).expanduser()
    if not path.is_absolute():
        path = Path(base_dir or Path.cwd()) / path
    return f"{path.resolve()}:{name}"


def builder_file(spec: str) -> Path | None:
    """The file a builder lives in (for copying it next to saved weights), or None for a module."""
    where, _ = split_spec(spec)
    if is_file_spec(where):
        return Path(where)
    module = sys.modules.get(where)
    file = getattr(module, "__file__", None)
    return Path(file) if file else None


def _import_file(spec: str, path: Path) -> Any:
    """Import a file under a stable module name derived from its absolute path."""
    path = path.resolve()
    module_name = f"automl_builder_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}_{path.stem}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise _fail(spec, f"{path} is not a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise _fail(spec, f"importing {path.name} failed: {type(e).__name__}: {e}") from None
    return module


def _import_module(spec: str, where: str) -> Any:
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as e:
        if e.name and where.startswith(e.name):
            raise _fail(spec, f"module {where!r} not found") from None
        raise _fail(spec, f"importing {where} failed: {type(e).__name__}: {e}") from None
    except Exception as e:
        raise _fail(spec, f"importing {where} failed: {type(e).__name__}: {e}") from None


def resolve_builder(
    spec: str, base_dir: str | Path | None = None, search_dirs: Iterable[str | Path] = ()
) -> Callable[..., Any]:
    """The class or function an import path names. A file that is not where the path says is looked
    for by its name in `search_dirs` (e.g. a checkpoint folder holding a copy)."""
    where, name = split_spec(spec)
    if is_file_spec(where):
        path = Path(absolute_spec(spec, base_dir).rpartition(":")[0])
        if not path.is_file():
            found = [Path(d) / path.name for d in search_dirs if (Path(d) / path.name).is_file()]
            if not found:
                raise _fail(spec, f"file not found: {path}")
            path = found[0]
        module = _import_file(spec, path)
    else:
        module = _import_module(spec, where)
    target: Any = module
    for part in name.split("."):
        if not hasattr(target, part):
            raise _fail(spec, f"no {name!r} in {Path(where).name if is_file_spec(where) else where}")
        target = getattr(target, part)
    if not callable(target):
        raise _fail(spec, f"{name!r} is a {type(target).__name__}, not a class or function")
    return target


def accepted_keywords(builder: Callable[..., Any]) -> tuple[set[str], bool]:
    """(the keyword names a builder takes, whether it takes **kwargs)."""
    try:
        signature = inspect.signature(builder)
    except (TypeError, ValueError):  # some builtins have no signature: accept anything
        return set(), True
    names = {p.name for p in signature.parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    return names, var_kw


def check_param_names(spec: str, builder: Callable[..., Any], names: Iterable[str]) -> None:
    """Every sampled name must be a keyword the builder takes (and not one the tool gives)."""
    accepted, var_kw = accepted_keywords(builder)
    for name in names:
        if name in SHAPE_ARGUMENTS:
            raise _fail(spec, f"{name!r} is given by the tool; it cannot be a parameter")
        if name not in accepted and not var_kw:
            takes = ", ".join(sorted(accepted - set(SHAPE_ARGUMENTS))) or "no parameters"
            raise _fail(spec, f"unknown keyword {name!r} (it takes: {takes})")


def call_builder(
    spec: str, builder: Callable[..., Any], params: Mapping[str, Any],
    input_shape: Sequence[int], n_outputs: int,
) -> nn.Module:
    """Build one network: the params, plus input_shape/n_outputs where the signature asks."""
    check_param_names(spec, builder, params)
    accepted, var_kw = accepted_keywords(builder)
    kwargs = dict(params)
    for key, value in (("input_shape", tuple(input_shape)), ("n_outputs", int(n_outputs))):
        if key in accepted or var_kw:
            kwargs[key] = value
    try:
        module = builder(**kwargs)
    except Exception as e:
        raise _fail(spec, f"building failed: {type(e).__name__}: {e}") from None
    if not isinstance(module, nn.Module):
        raise _fail(spec, f"returned a {type(module).__name__}, not a torch.nn.Module")
    return module


def check_builder(
    spec: str, params: Mapping[str, Any], input_shape: Sequence[int], n_outputs: int,
    base_dir: str | Path | None = None,
) -> nn.Module:
    """Import, build with `params`, run a batch of two zero inputs and check the output is
    (2, n_outputs) (or (2,) when n_outputs is 1). Returns the built network. The global torch
    random state is left as it was."""
    builder = resolve_builder(spec, base_dir)
    with torch.random.fork_rng(devices=[]):
        module = call_builder(spec, builder, params, input_shape, n_outputs)
        module.eval()
        try:
            with torch.no_grad():
                out = module(torch.zeros(2, *input_shape, dtype=torch.float32))
        except Exception as e:
            raise _fail(spec, f"forward failed on a batch of shape {(2, *input_shape)}: "
                              f"{type(e).__name__}: {e}") from None
    if not isinstance(out, torch.Tensor):
        raise _fail(spec, f"forward returned a {type(out).__name__}, not a tensor")
    allowed = [(2, n_outputs)] + ([(2,)] if n_outputs == 1 else [])
    if tuple(out.shape) not in allowed:
        raise _fail(spec, f"output shape {tuple(out.shape)} for a batch of 2, expected (2, {n_outputs})")
    return module


def import_path_of(obj: Any) -> str:
    """`module:qualname` of a class or function; a file path when it lives in `__main__` (a script).
    Raises BuilderError when it has no importable home (a notebook cell, a local class)."""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    module_name = getattr(obj, "__module__", None)
    if not callable(obj) or not name or not module_name:
        raise BuilderError(f"builder {_short(obj)}: expected a class or function")
    if "<locals>" in name:
        raise BuilderError(f"builder {name}: defined inside a function; the builder must live in an "
                           "importable module or file")
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    top_level_file = module is not None and not getattr(module, "__package__", None) and file
    if module_name == "__main__" or module_name.startswith("automl_builder_") or top_level_file:
        # a script, a file imported by path, or a lone module found through the cwd: name the file,
        # which another process (a worker started elsewhere) can import too
        if not file or not Path(file).is_file():
            raise BuilderError(f"builder {name}: defined in {module_name} (a notebook or interactive "
                               "session); the builder must live in an importable module or file")
        return f"{Path(file).resolve()}:{name}"
    return f"{module_name}:{name}"
