"""The registry: every implementation the harness can run, as `Registered` records, and plug-in loading.

Our implementations (impls/<framework>/<component>.py) and the adapters of
the frameworks' own layers (the records of conformance/components.py) are known without
importing any framework; plug-ins come as `package.module:attr` or
`path/to/file.py:attr`, or are installed under the entry-point group
`conformance.implementations`. The protocol an implementation follows is
written in impls/__init__.py.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Mapping

from conformance.spec import list_components
from conformance.vocabulary import DEFAULT_DTYPES, ENTRY_POINT, PLUGIN, SHIPPED, UsageError
from conformance.components import COMPONENTS
from impls import OUR_FRAMEWORKS

ENTRY_POINT_GROUP = "conformance.implementations"

# Which importable modules a framework needs. Keras also needs its backend.
FRAMEWORK_MODULES = {"numpy": ("numpy",), "torch": ("torch",), "keras": ("keras",), "jax": ("jax",)}


def keras_backend() -> str:
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def missing_modules(framework: str) -> list[str]:
    modules = list(FRAMEWORK_MODULES.get(framework, ()))
    if framework == "keras":
        modules.append(keras_backend())
    return [m for m in modules if importlib.util.find_spec(m) is None]


@dataclass
class Registered:
    """One implementation as the harness sees it: metadata, and the object once loaded."""

    component: str
    name: str
    framework: str
    target: str  # "module:attr" or "path/file.py:attr"
    source: str  # SHIPPED (with this project: `shipped`), PLUGIN or ENTRY_POINT (conformance/vocabulary.py)
    _obj: Any = None
    requires: tuple[str, ...] = ()  # modules it needs beyond its framework's (a library it adapts)

    def unavailable_reason(self) -> str | None:
        missing = missing_modules(self.framework) + [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            return f"not installed: {', '.join(missing)}"
        return None

    @property
    def group(self) -> str:
        """What `run --framework` selects it by: the library it adapts (its first `requires`), else its
        framework."""
        return self.requires[0] if self.requires else self.framework

    @property
    def label(self) -> str:
        """How results name it: a plug-in by its target, so that the name alone finds it again."""
        return self.target if self.source == PLUGIN else self.name

    def load(self) -> Any:
        if self._obj is None:
            self._obj = load_target(self.target)
        return self._obj

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(getattr(self.load(), "dtypes", DEFAULT_DTYPES))

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(getattr(self.load(), "modes", ("eager",)))

    def devices(self) -> list[str]:
        devices = getattr(self.load(), "devices", None)
        return list(devices()) if callable(devices) else ["cpu"]

    def backend(self) -> str | None:
        backend = getattr(self.load(), "backend", None)
        return backend() if callable(backend) else None

    def environment(self) -> dict[str, Any]:
        environment = getattr(self.load(), "environment", None)
        return dict(environment()) if callable(environment) else {}

    def outputs(self, spec_outputs: tuple[str, ...]) -> tuple[str, ...]:
        """The spec outputs this implementation returns; all of them unless it says otherwise."""
        declared = getattr(self.load(), "outputs", None)
        if declared is None:
            return tuple(spec_outputs)
        unknown = [o for o in declared if o not in spec_outputs]
        if unknown or not declared:
            raise UsageError(f"{self.label} declares outputs {tuple(declared)}; they must be a non-empty "
                             f"subset of the spec's: {', '.join(spec_outputs)}")
        return tuple(declared)

    def unsupported_config(self, config: Mapping[str, Any], example: Mapping[str, Any] | None = None,
                           dtype: str | None = None) -> str | None:
        """Why this implementation cannot run `config` (or, where its `supports` takes the example too, this
        example: its data parameters such as the mask kind and the lengths), or None when it can (or does not
        say). Without an example, a `supports` that wants one is not asked (the example was, before). A
        `supports` with a `dtype` keyword is told the cell's dtype."""
        supports = getattr(self.load(), "supports", None)
        if not callable(supports):
            return None
        kwargs = {"dtype": dtype} if dtype is not None and _takes_dtype(supports) else {}
        if _takes_example(supports):
            return None if example is None else supports(config, dict(example), **kwargs)
        return supports(config, **kwargs)

    def compiles_per_shape(self, mode: str) -> bool:
        """Whether each new input shape costs a compilation in `mode`: by default, in the compiled mode only."""
        says = getattr(self.load(), "compiles_per_shape", None)
        return bool(says(mode)) if callable(says) else mode != "eager"

    def compilations(self) -> dict[str, int]:
        """The framework's running compilation counts in this process, as the implementation reports them."""
        counts = getattr(self.load(), "compilations", None)
        return {k: int(v) for k, v in counts().items()} if callable(counts) else {}


def shipped() -> list[Registered]:
    """What ships with this project (source "shipped"): our implementations of every component and the
    adapters of the frameworks' own layers, from the component records, known without importing a framework."""
    present = set(list_components())  # a spec folder of some components ($CONFORMANCE_SPEC_DIR) lists those
    records = [c for c in COMPONENTS if c.id in present]
    ours = [Registered(c.id, fw, fw, c.ours(fw), SHIPPED) for c in records for fw in OUR_FRAMEWORKS]
    return ours + [Registered(c.id, layer.name, layer.framework, layer.target, SHIPPED, requires=layer.requires)
                   for c in records for layer in c.layers]


def find_shipped(component: str, name: str) -> Registered:
    for r in shipped():
        if r.component == component and r.name == name:
            return r
    raise UsageError(f"no built-in implementation {name!r} of {component!r}")


def registry() -> list[Registered]:
    """Built-in implementations, then those installed under the entry-point group (imported here:
    `conformance list` uses this; `check` and `run` import plug-ins in worker processes instead)."""
    found = shipped()
    for name, value in entry_point_targets():
        try:
            obj = load_target(value)
            found.append(_describe(obj, value, ENTRY_POINT, default_name=name))
        except Exception as e:  # a broken plug-in is listed, not fatal
            found.append(Registered("?", name, "?", value, f"entry point (broken: {e})"))
    return found


def entry_point_targets() -> list[tuple[str, str]]:
    """(name, "module:attr") of each implementation installed under the entry-point group, not imported."""
    return [(ep.name, ep.value) for ep in entry_points(group=ENTRY_POINT_GROUP)]


def load_target(target: str) -> Any:
    """Import `package.module:attr` or `path/to/file.py:attr`; instantiate it if it is a class.

    Whatever goes wrong is a UsageError of one line: for a plug-in that fails to
    import or to construct, its file and line and the first line of its error.
    """
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{target!r} is not of the form package.module:attr or path/to/file.py:attr")
    if module_name.endswith(".py") or os.sep in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise UsageError(f"no such file {module_name!r} (from {target!r})")
        # like running a script, the file can import its neighbours; but the folder is searched after every
        # installed module, and the plug-in's own file is not among the neighbours, so that a plug-in named
        # like a module a library looks for (jax_plugins.py) shadows nothing
        neighbours(path.resolve())
        spec = importlib.util.spec_from_file_location(f"_conformance_plugin_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise UsageError(f"cannot import {target!r}: {_failure(e)}") from None
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and module_name.startswith(e.name):  # the module itself, or its package
                raise UsageError(f"cannot import {module_name!r} (from {target!r}): {e}") from None
            raise UsageError(f"cannot import {target!r}: {_failure(e)}") from None
        except Exception as e:
            raise UsageError(f"cannot import {target!r}: {_failure(e)}") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        public = [n for n in vars(module) if not n.startswith("_")]
        raise UsageError(f"{module_name!r} has no attribute {attr!r}; it has: {', '.join(public)}") from None
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as e:
            raise UsageError(f"cannot construct {target!r} (it is called with no arguments): "
                             f"{_failure(e, obj)}") from None
    return obj


def _takes_example(supports: Any) -> bool:
    """Whether `supports` is `supports(config, example)` rather than `supports(config)`."""
    import inspect

    try:
        parameters = list(inspect.signature(supports).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "dtype"]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


def _takes_dtype(supports: Any) -> bool:
    """Whether `supports` takes a `dtype` keyword."""
    import inspect

    try:
        parameter = inspect.signature(supports).parameters.get("dtype")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)


class _Neighbours:
    """A finder, last on sys.meta_path, for the top-level modules of plug-in files' folders, other than the
    plug-in files themselves (which load under private names)."""

    def __init__(self) -> None:
        self.folders: list[str] = []
        self.own: set[tuple[str, str]] = set()  # (folder, module name) of the plug-in files

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if path is not None or "." in name:  # a submodule: its package's own path finds it
            return None
        from importlib.machinery import PathFinder

        for folder in self.folders:
            if (folder, name) not in self.own and (found := PathFinder.find_spec(name, [folder])) is not None:
                return found
        return None


class _Hidden:
    """A finder, first on sys.meta_path, that keeps plug-in files from being imported under their own names
    (where their folder is on sys.path anyway, as the working folder is) by code outside their folder: such
    a name is looked up in the rest of sys.path only, so that a library looking for a module of that name
    (JAX for `jax_plugins`) finds what is installed, or nothing, while the plug-in's neighbours may still
    import it."""

    def __init__(self) -> None:
        self.files: dict[str, set[str]] = {}  # module name -> the plug-in files of that name

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if path is not None or name not in self.files:
            return None
        from importlib.machinery import PathFinder

        folders = {os.path.dirname(f) for f in self.files[name]}
        if _importer_folder() in folders:
            return None
        rest = [p for p in sys.path if os.path.abspath(p or os.curdir) not in folders]
        found = PathFinder.find_spec(name, rest)
        if found is None:
            raise ModuleNotFoundError(f"No module named {name!r} (a plug-in file of that name is not it)", name=name)
        return found


def _importer_folder() -> str | None:
    """The folder of the file whose import statement is being carried out (the first frame outside the import
    machinery)."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith("<") or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    return None if frame is None else os.path.dirname(os.path.abspath(frame.f_code.co_filename))


_NEIGHBOURS, _HIDDEN = _Neighbours(), _Hidden()


def neighbours(plugin: Path) -> None:
    """Make the modules beside the plug-in file `plugin` importable, after every installed one, and the file
    itself not importable under its own name."""
    folder = str(plugin.parent)
    if folder not in _NEIGHBOURS.folders:
        _NEIGHBOURS.folders.append(folder)
    _NEIGHBOURS.own.add((folder, plugin.stem))
    _HIDDEN.files.setdefault(plugin.stem, set()).add(str(plugin))
    if _NEIGHBOURS not in sys.meta_path:
        sys.meta_path.append(_NEIGHBOURS)
    if _HIDDEN not in sys.meta_path:
        sys.meta_path.insert(0, _HIDDEN)


def _failure(e: BaseException, cls: type | None = None) -> str:
    """`file:line: Type: the first line of the message`, the line being where the error arose."""
    import inspect
    import traceback

    where = None
    if isinstance(e, SyntaxError) and e.filename:
        where, message = f"{e.filename}:{e.lineno}", e.msg
    else:
        message = str(e)
        frames = [f for f in traceback.extract_tb(e.__traceback__)
                  if f.filename != __file__ and "importlib" not in f.filename and not f.filename.startswith("<")]
        if frames:
            where = f"{frames[-1].filename}:{frames[-1].lineno}"
        elif cls is not None:  # raised at the call itself, e.g. missing arguments: point at the class
            try:
                where = f"{inspect.getsourcefile(cls)}:{inspect.getsourcelines(cls)[1]}"
            except (OSError, TypeError):
                pass
    first = (message.strip().splitlines() or [""])[0]
    return f"{where + ': ' if where else ''}{type(e).__name__}{': ' + first if first else ''}"


def _describe(obj: Any, target: str, source: str, default_name: str) -> Registered:
    if not isinstance(getattr(obj, "component", None), str) or not callable(getattr(obj, "build", None)):
        raise UsageError(f"{target!r} is not an implementation: it needs a 'component' string "
                         "and a build(config, *, dtype, device) method (see impls/__init__.py)")
    r = Registered(obj.component, getattr(obj, "name", default_name), getattr(obj, "framework", "numpy"),
                   target, source)
    r._obj = obj
    return r


def resolve(component: str, name_or_target: str) -> Registered:
    """A registered implementation by name, or a plug-in given as module:attr / file.py:attr."""
    if ":" in name_or_target:
        attr = name_or_target.rpartition(":")[2]
        r = _describe(load_target(name_or_target), name_or_target, PLUGIN, default_name=attr)
        if r.component != component:
            raise UsageError(f"{name_or_target!r} implements {r.component!r}, not {component!r}")
        return r
    return by_name(component, name_or_target, registry())


def by_name(component: str, name: str, registered: list[Any]) -> Any:
    """The one of `registered` (anything with `component` and `name`) that is `name` of `component`."""
    candidates = [r for r in registered if r.component == component]
    for r in candidates:
        if r.name == name:
            return r
    names = ", ".join(r.name for r in candidates) or "none"
    raise UsageError(f"unknown implementation {name!r} of {component!r}; "
                     f"registered: {names}; or give a plug-in as package.module:attr or file.py:attr")
