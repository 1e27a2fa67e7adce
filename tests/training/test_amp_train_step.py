"""The VL trainers on the GPU precision path, emulated on CPU: nnU-Net's train_step runs its forward and loss
under autocast only on CUDA, so here the whole step runs inside CPU autocast (bf16: fp16 conv backward is far too
slow on CPU; the fp16 range problems are covered at stage size in tests/networks/test_amp.py), and the predictor's
sliding window inside fp16 autocast, as nnU-Net predicts on CUDA."""
from __future__ import annotations


import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("single_thread")

TRAINERS = ["nnUNetTrainerBiPVL_cpu", "nnUNetTrainerTMCA_cpu"]



@pytest.fixture(scope="module", params=TRAINERS)
def trainer(request, planned_2d, nnunet_folders, vl_trainer):
    return vl_trainer(request.param, nnunet_folders["nnUNet_preprocessed"] / "Dataset801_SynthVL2D")



def _gates(network) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in network.named_parameters() if n.endswith("_gate")}


def test_train_step_under_bf16_autocast_gives_finite_loss_and_gradients(trainer, loader_batch):
    network = trainer.network
    gates_before = {n: p.detach().clone() for n, p in _gates(network).items()}
    for seed in (0, 1):  # the second step runs with gates the first one opened
        with torch.autocast("cpu", dtype=torch.bfloat16):
            result = trainer.train_step(loader_batch(trainer, seed))
        terms = {k: float(np.asarray(v)) for k, v in result.items()}
        assert terms and all(np.isfinite(v) for v in terms.values()), terms
        assert set(trainer.text_loss_terms()) <= set(terms)
        grads = {n: p.grad for n, p in network.named_parameters() if p.requires_grad}
        missing = [n for n, g in grads.items() if g is None]
        # nnU-Net weighs its lowest-resolution deep-supervision output 0 and skips it: that head gets no gradient
        assert all(n.startswith("image_unet.decoder.seg_layers.0.") for n in missing), missing[:8]
        bad = [n for n, g in grads.items() if g is not None and not torch.isfinite(g).all()]
        assert not bad, bad[:5]
    # gradients reached the zero-initialised gates and the optimizer moved them: the text path trains
    assert any(not torch.equal(p.detach(), gates_before[n]) for n, p in _gates(network).items())


def test_sliding_window_prediction_under_fp16_autocast(trainer):
    from nnunet_vl.inference.predictor import nnUNetPredictorVL

    network = trainer.network
    with torch.no_grad():
        for gate in _gates(network).values():
            gate.fill_(0.5)  # the text path changes every fused stage
    trainer.set_deep_supervision_enabled(False)
    network.eval()
    try:
        predictor = nnUNetPredictorVL(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                      perform_everything_on_device=True, device=torch.device("cpu"), verbose=False,
                                      verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(network, trainer.plans_manager, trainer.configuration_manager,
                                        [network.state_dict()], trainer.dataset_json, trainer.__class__.__name__,
                                        trainer.inference_allowed_mirroring_axes)
        predictor.set_text_provider(trainer.text_provider)
        dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder)
        case = sorted(dataset.identifiers)[0]
        data = torch.from_numpy(np.asarray(dataset.load_case(case)[0][:], dtype=np.float32))
        data = torch.cat([data, data], dim=-1)  # wider than the patch: several tiles
        predictor.select_case(case)
        reference = predictor.predict_sliding_window_return_logits(data).float()
        with torch.autocast("cpu", dtype=torch.float16):
            logits = predictor.predict_sliding_window_return_logits(data).float()
    finally:
        trainer.set_deep_supervision_enabled(True)
        network.train()
    assert logits.shape == reference.shape and torch.isfinite(logits).all()
    agreement = (logits.argmax(0) == reference.argmax(0)).float().mean()
    assert agreement > 0.99, float(agreement)
    torch.testing.assert_close(logits, reference, rtol=0.05, atol=0.05)


def test_compiled_train_steps_do_not_recompile(trainer, loader_batch):
    """The trainer's own train_step with the network compiled as nnU-Net's initialize() does on CUDA (here the
    aot_eager backend, see tests/networks/test_compile.py), under bf16 autocast: new batches, no new graphs.
    BiPVL only: compiling costs about a minute on this CPU, and TMCA goes through the same trainer code (its network
    is compiled in tests/networks/test_compile.py)."""
    if type(trainer).__name__ != "nnUNetTrainerBiPVL_cpu":
        pytest.skip("the trainer path is shared; TMCA's network compile is tested in tests/networks/test_compile.py")
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager = trainer.network
    trainer.network = torch.compile(eager, backend="aot_eager")
    try:
        losses = []
        for seed in range(4):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                losses.append(float(np.asarray(trainer.train_step(loader_batch(trainer, 10 + seed))["loss"])))
            if seed == 0:
                graphs = counters["stats"]["unique_graphs"]
    finally:
        trainer.network = eager
    assert all(np.isfinite(losses)), losses
    assert graphs >= 1 and counters["stats"]["unique_graphs"] == graphs, "train_step recompiled the network"
    assert not counters["graph_break"], dict(counters["graph_break"])
