"""Shared fixtures: nnU-Net folders for the test session, a tiny random BERT, tiny synthetic datasets."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

# nnunetv2 reads its folders from the environment when first imported: set them before any test imports it,
# always to a fresh temporary tree so a developer's real nnU-Net folders are never touched.
_ROOT = Path(tempfile.mkdtemp(prefix="nnunet_vl_tests_"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
for _var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    os.environ[_var] = str(_ROOT / _var)
    (_ROOT / _var).mkdir()
os.environ["nnUNet_extTrainer"] = str(Path(__file__).resolve().parents[1] / "nnunet_vl" / "trainers")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["nnUNet_def_n_proc"] = "1"
os.environ["nnUNet_n_proc_DA"] = "1"

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

_WORDS = """
the a an of in on at to and or with without is are was were be been has have this that these those
left right upper lower middle anterior posterior medial lateral superior inferior central peripheral
target lesion lesions mass nodule tumor tumour cyst organ liver kidney spleen pancreas lung heart brain
bladder stomach aorta vessel bone background tissue region structure object objects first second third
largest smallest large small big tiny round oval elongated irregular smooth sharp blurred margin contour
shape location appearance density texture internal homogeneous heterogeneous bright dark hypodense
hyperdense enhancing necrotic solid cystic calcified symmetric asymmetric top bottom side near far
above below between beside next inside outside one two three four five single multiple several no
normal abnormal patient scan image slice axial coronal sagittal ct mr mri contrast phase segment lobe
wall edge border surface core rim ring area volume size diameter mm cm visible seen shows shown noted
along across around within from by for as it its than more most less least very well likely possibly
suspicious benign malignant metastasis infiltration oedema edema effusion fluid fat air blood cortex
gland duct artery vein chamber ventricle atrium myocardium valve septum apex base head tail body neck
dome hilum capsule parenchyma focal diffuse patchy linear nodular lobulated spiculated ill defined well
""".split()


def pytest_configure(config: pytest.Config) -> None:
    """Print the slowest tests after every run (the suite's time budget is watched in CI's output)."""
    if config.option.durations is None:
        config.option.durations = 15


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin-waits when the CPU is shared (often 100x faster).
    Modules of such tests use it with `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _saved_tensor_bytes(run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """run()'s result and the bytes of the distinct storages autograd kept for its backward pass."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = run()
    return result, sum(storages.values())


def _check_recompute(build: Callable[[tuple[int, ...]], torch.nn.Module],
                     loss: Callable[[torch.nn.Module], torch.Tensor], recompute: tuple[int, ...]) -> None:
    """build(recompute) gives the same loss and gradients as build(()) and keeps fewer bytes for backward."""
    results = []
    for stages in ((), recompute):
        model = build(stages).train()
        value, kept = _saved_tensor_bytes(lambda: loss(model))
        value.backward()
        results.append((value.item(), kept, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_plain, kept_plain, grads_plain), (loss_recomputed, kept_recomputed, grads_recomputed) = results
    assert loss_recomputed == pytest.approx(loss_plain, rel=1e-6)
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_recomputed[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert kept_recomputed < 0.9 * kept_plain, (kept_recomputed, kept_plain)


@pytest.fixture
def check_recompute() -> Callable:
    """_check_recompute: a network with recompute_stages against the same network without."""
    return _check_recompute


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with a tiny random BERT (2 layers, width 32) and its fast tokenizer."""
    directory = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(_WORDS), *".,;:-()"]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast.from_pretrained(directory).save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def nnunet_folders() -> dict[str, Path]:
    """The session's nnU-Net raw, preprocessed and results folders (also set in os.environ)."""
    return {var: Path(os.environ[var]) for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}


@pytest.fixture(scope="session")
def planned_2d(tiny_bert: Path, nnunet_folders: dict[str, Path]) -> int:
    """A tiny synthetic 2D dataset (id 801), planned and preprocessed with the tiny BERT."""
    from nnunet_vl.data.synthetic import make_synthetic_dataset
    from nnunet_vl.planning.api import plan_and_preprocess_vl

    make_synthetic_dataset(nnunet_folders["nnUNet_raw"], 801, dim=2, num_train=12, num_test=3, size=32, seed=1)
    plan_and_preprocess_vl(801, configurations=["2d"], text_encoder=str(tiny_bert), num_processes_fingerprint=1,
                           num_processes=[1])
    return 801


def _vl_trainer(name: str, preprocessed: Path, configuration: str = "2d"):
    """A VL trainer variant (by class name) built from a planned dataset's folder as nnUNetv2_train builds it,
    initialised and with its mirroring configured."""
    from nnunet_vl.training import nnUNetTrainerBiPVL, nnUNetTrainerTMCA

    module = nnUNetTrainerBiPVL if "BiPVL" in name else nnUNetTrainerTMCA
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # nnU-Net 2.8 reads this from the plans dict
    trainer = getattr(module, name)(plans, configuration, 0, json.loads((preprocessed / "dataset.json").read_text()),
                                    torch.device("cpu"))
    trainer.initialize()
    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    return trainer


def _loader_batch(trainer, seed: int = 0) -> dict:
    """A batch from nnU-Net's data loader at the planned batch and patch size, foreground oversampled, with
    nnU-Net's validation transforms (deep-supervision targets; region channels for region datasets)."""
    import numpy as np
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

    lm = trainer.label_manager
    transforms = trainer.get_validation_transforms(trainer._get_deep_supervision_scales(), trainer.is_cascaded,
                                                   lm.foreground_labels, lm.foreground_regions if lm.has_regions
                                                   else None, lm.ignore_label)
    patch = trainer.configuration_manager.patch_size
    loader = nnUNetDataLoader(trainer.dataset_class(trainer.preprocessed_dataset_folder), trainer.batch_size, patch,
                              patch, lm, oversample_foreground_percent=1.0, transforms=transforms)
    np.random.seed(seed)
    return loader.generate_train_batch()


@pytest.fixture(scope="session")
def vl_trainer() -> Callable:
    """_vl_trainer(name, preprocessed_folder, configuration='2d')."""
    return _vl_trainer


@pytest.fixture(scope="session")
def loader_batch() -> Callable:
    """_loader_batch(trainer, seed=0)."""
    return _loader_batch
