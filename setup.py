"""The optional C speedup (socker_transports/wire/_speedups.c); the rest of the
build is in pyproject.toml.

`optional=True`: where the extension cannot be compiled (no compiler, no Python
headers) the install goes on without it and socker uses its pure-Python masking.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "socker_transports.wire._speedups",
            ["socker_transports/wire/_speedups.c"],
            optional=True,
        )
    ]
)
