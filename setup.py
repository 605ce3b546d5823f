"""Installs the repository's top-level folders under one namespace: pipeline/ -> llava_batch.pipeline, etc.

The repository keeps pipeline/, jobs/ and operators/ at its top level; a wheel (and an editable install) must
still put nothing but `llava_batch` into site-packages, so that a user's own `pipeline` folder or a PyPI package of
that name can never shadow ours. The package list is derived from the folders, so a new sub-package needs no entry.
"""

from setuptools import find_packages, setup

# Repository folder -> installed package; llava_batch/ itself holds the front door (API, CLI) and the checkpoints.
MAPPED_FOLDERS = ("pipeline", "jobs", "operators", "training")

package_dir = {"llava_batch": "llava_batch"}
packages = ["llava_batch", *(f"llava_batch.{name}" for name in find_packages("llava_batch"))]
for folder in MAPPED_FOLDERS:
    package_dir[f"llava_batch.{folder}"] = folder
    packages += [f"llava_batch.{folder}", *(f"llava_batch.{folder}.{name}" for name in find_packages(folder))]

setup(packages=packages, package_dir=package_dir)
