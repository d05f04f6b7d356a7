"""Build hook: compile the bundled puppy kernel (lguest/guests/) and the Host's doorbell
hook (lguest/host/_kick.so) into the package."""

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
        host = Path(self.build_lib) / "lguest" / "host"
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(host / "_kick.so"),
                        str(Path(__file__).resolve().parent / "lguest" / "host" / "kick.c")], check=True)


setup(cmdclass={"build_py": BuildWithPuppy})
