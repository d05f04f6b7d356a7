"""Build hook: compile the bundled puppy kernel (lguest/guests/) and the Host's C hooks
(the doorbell and fixed port reads: lguest/host/_native.so) into the package."""

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
        subprocess.run(["make", "-s", "-C", str(source)], check=True)
        target = Path(self.build_lib) / "lguest" / "guests"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / "build" / "puppy.elf", target / "puppy.elf")
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
