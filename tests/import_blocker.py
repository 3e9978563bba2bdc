"""Make modules unimportable in a child Python process, and tell what it imported.

`site_without` builds a site-packages folder that lacks some packages
altogether, metadata included, for a child started with `python -S`.

`blocker_env` writes a `sitecustomize.py` into a folder and returns an
environment whose PYTHONPATH starts with that folder. Python imports
`sitecustomize` at start-up, and the one written here puts a meta path
finder first on `sys.meta_path`. The finder:

* raises ModuleNotFoundError for a `blocked` module, as if it were not installed;
* returns a spec whose loader raises ImportError for a `broken` module, as for
  an install whose files are damaged or that needs a missing library.

`split_importtime` parses the `-X importtime` output of a child, which lists
every module it imported, TensorFlow included.
"""

from __future__ import annotations

import os
import pathlib
import sysconfig

_SITECUSTOMIZE = '''\
import importlib.abc
import importlib.util
import os
import sys

_BLOCKED = set(filter(None, os.environ.get("TFPS_TEST_BLOCKED_MODULES", "").split(",")))
_BROKEN = set(filter(None, os.environ.get("TFPS_TEST_BROKEN_MODULES", "").split(",")))


class _BrokenLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ImportError(f"{module.__name__} is broken on purpose by the test's sitecustomize")


class _TestFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked by the test)", name=fullname)
        if fullname in _BROKEN:
            return importlib.util.spec_from_loader(fullname, _BrokenLoader())
        return None


sys.meta_path.insert(0, _TestFinder())
'''


def blocker_env(folder: pathlib.Path, blocked: tuple[str, ...] = (), broken: tuple[str, ...] = (),
                base: dict | None = None) -> dict:
    """Returns a child environment whose Python start-up installs the finder.

    Args:
      folder: Where `sitecustomize.py` goes (a test's tmp_path).
      blocked: Top-level modules that fail to import as if not installed.
      broken: Modules that are found but raise ImportError when imported.
      base: The environment to extend; os.environ when None.
    """
    site = folder / "blocker_site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE, encoding="utf-8")
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    env["TFPS_TEST_BLOCKED_MODULES"] = ",".join(blocked)
    env["TFPS_TEST_BROKEN_MODULES"] = ",".join(broken)
    return env


def split_importtime(stderr: str) -> tuple[set[str], list[str]]:
    """Splits the stderr of a `python -X importtime` child into imported modules and other lines.

    Each import writes `import time: SELF | CUMULATIVE | MODULE`, indented by nesting.
    """
    modules = set()
    lines = []
    for line in stderr.splitlines():
        if line.startswith("import time:"):
            modules.add(line.rsplit("|", 1)[-1].strip())
        else:
            lines.append(line)
    return modules, lines


def site_without(folder: pathlib.Path, excluded: tuple[str, ...]) -> pathlib.Path:
    """Returns a copy of this interpreter's site-packages, made of symlinks, without some entries.

    For a child started as `python -S` with PYTHONPATH set to the returned
    folder, the excluded packages were never installed:
    neither their modules nor their `*.dist-info` metadata exist. (`-S` keeps
    the real site-packages off sys.path.)

    Args:
      folder: Where the copy goes (a test's tmp_path).
      excluded: Entry name prefixes to leave out, such as `tf_keras`, which
        matches the `tf_keras` package and `tf_keras-2.21.0.dist-info`.
    """
    paths = sysconfig.get_paths()
    shadow = folder / "site_without"
    shadow.mkdir(exist_ok=True)
    for source in sorted({paths["purelib"], paths["platlib"]}):
        for entry in pathlib.Path(source).iterdir():
            target = shadow / entry.name
            if entry.name.startswith(excluded) or target.exists():
                continue
            target.symlink_to(entry)
    return shadow
