"""Region-based training (dataset.json regions + regions_class_order, as BraTS) with both VL trainers: planning, the
text losses on region channels, final validation per region and prediction with nnUNetPredictorVL."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import distance_transform_edt

pytestmark = pytest.mark.usefixtures("single_thread")

DATASET_ID = 861
REGIONS = {"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}


def _nest(mask: np.ndarray) -> np.ndarray:
    """A blob mask as nested labels: 1 at its rim, 2 inside, 3 at its centre."""
    depth = distance_transform_edt(mask)
    return (mask.astype(np.uint8) + (depth > 1.5) + (depth > 2.8)).astype(np.uint8)


@pytest.fixture(scope="module")
def region_dataset(tiny_bert: Path, nnunet_folders: dict[str, Path]) -> Path:
    """The synthetic 2D dataset with its target blobs relabelled as three nested regions, planned; its
    preprocessed folder."""
    from nnunet_vl.data.synthetic import make_synthetic_dataset
    from nnunet_vl.planning.api import plan_and_preprocess_vl

    raw = make_synthetic_dataset(nnunet_folders["nnUNet_raw"], DATASET_ID, dim=2, num_train=8, num_test=1, size=40,
                                 seed=4, name="RegionsVL2D")
    for label_file in [*raw.glob("labelsTr/*.png"), *raw.glob("labelsTs/*.png")]:
        Image.fromarray(_nest(np.asarray(Image.open(label_file)) > 0)).save(label_file)
    dataset_json = json.loads((raw / "dataset.json").read_text())
    dataset_json.update(labels={"background": 0, **REGIONS}, regions_class_order=[1, 2, 3], label_texts="brats")
    (raw / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    plan_and_preprocess_vl(DATASET_ID, configurations=["2d"], text_encoder=str(tiny_bert),
                           num_processes_fingerprint=1, num_processes=[1])
    return nnunet_folders["nnUNet_preprocessed"] / raw.name


def test_check_and_plans_have_one_class_text_per_region(region_dataset, tiny_bert, capsys):
    from nnunet_vl.cli.main import main

    assert main(["check", "-d", str(DATASET_ID), "--text-encoder", str(tiny_bert)]) == 0
    assert "0 error(s)" in capsys.readouterr().out
    text = json.loads((region_dataset / "nnUNetPlans.json").read_text())["configurations"]["2d"]["text"]
    assert text["class_names"] == list(REGIONS)  # one class text per sigmoid head, no background




@pytest.mark.parametrize("name", ["nnUNetTrainerBiPVL_cpu", "nnUNetTrainerTMCA_cpu"])
def test_region_training_validation_and_prediction(region_dataset, nnunet_folders, name, loader_batch, vl_trainer):
    from nnunet_vl.inference.predictor import nnUNetPredictorVL
    from nnunet_vl.losses.targets import class_masks

    trainer = vl_trainer(name, region_dataset)
    assert trainer.label_manager.has_regions and trainer.label_manager.num_segmentation_heads == 3
    assert [n for n, _ in trainer.network.text_assets.label_texts] == list(REGIONS)

    seen = []
    text_loss = trainer.text_loss

    def recording_loss(aux, target):
        seen.append((target.detach().clone(), aux.get("text_class")))
        return text_loss(aux, target)

    trainer.text_loss = recording_loss
    for seed in (0, 1):
        result = trainer.train_step(loader_batch(trainer, seed))
        assert all(np.isfinite(float(np.asarray(result[k]))) for k in ("loss", *trainer.text_loss_terms()))
    target, text_class = seen[-1]
    masks = class_masks(target, 3)
    assert target.shape[1] == 3  # one binary channel per region reaches the text loss
    sizes = masks.flatten(2).sum(2).sum(0)
    assert sizes[0] > sizes[1] > sizes[2] > 0  # nested regions, each its own mask
    if text_class is not None:  # BiPVL: one class text per region
        assert text_class.shape[1] == 3

    if "BiPVL" in name:  # the final validation is the trainers' shared code: once is enough (it costs ~10 s)
        trainer.perform_actual_validation()
        summary = json.loads((Path(trainer.output_folder) / "validation" / "summary.json").read_text())
        assert set(summary["mean"]) == {"(1, 2, 3)", "(2, 3)", "3"}  # every region scored

    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    predictor = nnUNetPredictorVL(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"),
                                  allow_tqdm=False, verbose=False, verbose_preprocessing=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager,
                                    [trainer.network.state_dict()], trainer.dataset_json, type(trainer).__name__,
                                    trainer.inference_allowed_mirroring_axes)
    predictor.set_text_provider(trainer.text_provider)
    image_file = next((nnunet_folders["nnUNet_raw"] / region_dataset.name).glob("imagesTs/*_0000.png"))
    image, properties = trainer.plans_manager.image_reader_writer_class().read_images([str(image_file)])
    report = trainer.text_provider.reports[image_file.name[: -len("_0000.png")]]
    seg, probabilities = predictor.predict_single_npy_array(image, properties, save_or_return_probabilities=True,
                                                            report=report)
    assert probabilities.shape == (3, *image.shape[1:]) and seg.shape == image.shape[1:]
    assert set(np.unique(seg)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(seg, trainer.label_manager.convert_probabilities_to_segmentation(probabilities))
