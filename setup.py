"""Build the optional native header parser; all metadata lives in pyproject.toml.

``pip install .`` compiles ``dicomlake.dicom._native`` with the machine's C compiler. Without
a working compiler the build of the extension fails quietly (``optional=True``) and
dicomlake runs on the pure pydicom path. ``DICOMLAKE_SANITIZE=1`` builds it with
AddressSanitizer and UndefinedBehaviorSanitizer (run Python with ``LD_PRELOAD`` of
``libasan.so`` then).
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

_SANITIZE = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
_sanitize = os.environ.get("DICOMLAKE_SANITIZE", "") not in ("", "0")

setup(
    ext_modules=[
        Extension(
            "dicomlake.dicom._native",
            sources=["csrc/header.c"],
            depends=["csrc/vr_table.h"],
            extra_compile_args=(_SANITIZE if _sanitize else ["-O2"]) + ["-std=c11"],
            extra_link_args=_SANITIZE if _sanitize else [],
            optional=True,
        )
    ],
)
