"""The model families, one module each. Every module here defines a network and registers its
`Family` record (nets/family.py); all of them are imported here, so adding a family is adding its
module to this folder and touching nothing else."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
