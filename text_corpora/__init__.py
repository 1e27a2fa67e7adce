"""Data package: the JSON files beside this file are installed with nnunet_vl (see nnunet_vl.package_data)."""
