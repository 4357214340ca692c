"""Loading a loss file from an installed package's folder, for losses whose package cannot be
imported on this machine (its ``__init__`` loads CUDA extensions): the file runs from where pip
put it, under its own module name, and nothing of it is copied into the kit."""
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path


def _parents(name: str, folder: Path) -> None:
    """Empty packages for ``name``'s parents not yet imported (their ``__init__`` never runs), so
    that the file's own ``import package.sub.module`` finds what ``load`` put in ``sys.modules``."""
    parts = name.split(".")
    for depth in range(1, len(parts)):
        parent = ".".join(parts[:depth])
        if parent not in sys.modules:
            package = types.ModuleType(parent)
            package.__path__ = [str(folder.joinpath(*parts[1:depth]))]
            package.__spec__ = importlib.machinery.ModuleSpec(parent, None, is_package=True)
            package.__spec__.submodule_search_locations = package.__path__
            sys.modules[parent] = package
            if depth > 1:
                setattr(sys.modules[".".join(parts[:depth - 1])], parts[depth - 1], package)


def load(package: str, relative: str, name: str):
    """The module at ``relative`` (a path inside ``package``'s installed folder), imported as
    ``name`` without running the package's ``__init__``; a module already loaded is reused."""
    if name in sys.modules:
        return sys.modules[name]
    folder = Path(importlib.util.find_spec(package).submodule_search_locations[0])
    _parents(name, folder)
    spec = importlib.util.spec_from_file_location(name, folder / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, module)
    spec.loader.exec_module(module)
    return module
