"""Build script: compiles every Cython kernel under stalwart/_fast/.

Every ``.pyx`` found there is built, so a new kernel needs no edit here. Each kernel has a
pure-Python twin (``<name>_py.py``); ``stalwart._fast.load`` falls back to it when the
compiled module is missing or STALWART_NO_EXTENSIONS=1 is set.
"""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def extensions():
    exts = []
    for path in sorted(glob.glob(os.path.join(HERE, "stalwart", "_fast", "*.pyx"))):
        name = os.path.splitext(os.path.basename(path))[0]
        rel = os.path.relpath(path, HERE)
        exts.append(
            Extension(
                f"stalwart._fast.{name}",
                [rel],
                extra_compile_args=["-O3"],
            )
        )
    return cythonize(
        exts,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )


setup(ext_modules=extensions())
