"""The repository's derive/ and codegen/ install as gradsmith.derive and gradsmith.codegen,
codegen/root/ as the gradsmith package itself, and generated/ as its kernels (package data)."""

from setuptools import find_packages, setup

SUBPACKAGES = find_packages(include=["derive", "derive.*", "codegen", "codegen.*"],
                            exclude=["codegen.root"])

setup(
    packages=["gradsmith", "gradsmith.generated", *(f"gradsmith.{name}" for name in SUBPACKAGES)],
    package_dir={
        "gradsmith": "codegen/root",
        "gradsmith.derive": "derive",
        "gradsmith.codegen": "codegen",
        "gradsmith.generated": "generated",
    },
    package_data={
        "gradsmith.codegen": ["templates/*/*", "data/*"],
        "gradsmith.generated": ["*/*"],
    },
)
