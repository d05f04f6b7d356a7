"""Build hook: compile the bundled puppy kernel, in both page-table formats (lguest/guests/),
and the Host's C hooks (lguest/host/*.c, built into lguest/host/_native.so) into the package."""

import importlib.util
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithPuppy(build_py):
    def run(self) -> None:
        super().run()
        source = Path(__file__).resolve().parent / "puppy"
        target = Path(self.build_lib) / "lguest" / "guests"
        target.mkdir(parents=True, exist_ok=True)
        # Both page-table formats: `lguest run --pae` boots the second.
        for build, name, flags in (("build", "puppy.elf", []), ("build-pae", "puppy-pae.elf", ["PAE=1"])):
            subprocess.run(["make", "-s", "-C", str(source), *flags], check=True)
            shutil.copy(source / build / "puppy.elf", target / name)
        native = _load_native(Path(__file__).resolve().parent / "lguest" / "host" / "native.py")
        host = Path(self.build_lib) / "lguest" / "host"
        host.mkdir(parents=True, exist_ok=True)
        native.build(target=host / "_native.so")


def _load_native(path: Path):
    """lguest/host/native.py on its own (it needs only the standard library): one build recipe."""
    spec = importlib.util.spec_from_file_location("lguest_native", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


setup(cmdclass={"build_py": BuildWithPuppy})
