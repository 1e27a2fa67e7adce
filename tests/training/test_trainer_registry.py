"""Every trainer the package defines is found by nnU-Net's lookup (nnUNet_extTrainer imports nnunet_vl.trainers)."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import nnunet_vl.training
from nnunet_vl.trainers import nnunet_vl_trainers


def test_every_trainer_class_is_registered_for_nnunet():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    defined = set()
    for module in pkgutil.iter_modules(nnunet_vl.training.__path__):
        loaded = importlib.import_module(f"nnunet_vl.training.{module.name}")
        defined |= {name for name, obj in inspect.getmembers(loaded, inspect.isclass)
                    if issubclass(obj, nnUNetTrainer) and obj.__module__ == loaded.__name__
                    and name.startswith("nnUNetTrainer") and name != "nnUNetTrainerVL"}
    registered = {name for name, obj in vars(nnunet_vl_trainers).items() if inspect.isclass(obj)}
    assert "nnUNetTrainerBiPVL_patchPositions" in defined
    assert defined - registered == set()
