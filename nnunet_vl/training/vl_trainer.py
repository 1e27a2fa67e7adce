"""What every VL trainer shares: text per batch, text-aware mirroring, text encoder learning rate, logging.

nnU-Net's train_step/validation_step call `self.network(data)` and `self.loss(output, target)`. Rather
than copying them, a VL trainer lets them run unchanged with `self.network` bound to the batch's text
(TextBoundNetwork) and `self.loss` extended by the method's text loss for the duration of one step.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from os.path import join

import numpy as np
import torch
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot
from torch import distributed as dist
from torch import nn

from nnunet_vl.networks.positions import mirror_place
from nnunet_vl.networks.text_inputs import TextInputs
from nnunet_vl.text.cache import load_text_cache
from nnunet_vl.text.directions import dataset_fixed_side_names
from nnunet_vl.text.encoders import load_pretrained_encoder, load_tokenizer, resolve_encoder
from nnunet_vl.text.provider import TextProvider, tokenizer_files
from nnunet_vl.text.tokens import TextTokenizer
from nnunet_vl.training.lateral import LateralSwap, lateral_swap_from_text_plan, permute
from nnunet_vl.training.progress import SEGMENTATION_TERM, add_text_terms_to_logger
from nnunet_vl.training.text_predictor import TextBoundNetwork, TextPredictor, unwrap
from nnunet_vl.training.network_builder import text_lr_factor, text_plan
from nnunet_vl.training.patch_places import placed_data_loaders
from nnunet_vl.training.warm_start import (load_image_unet_weights, pretrained_weights_file,
                                            refuse_stock_pretrained_weights)

MAX_ROTATION_DEGREES = 15.0  # larger rotations turn "upper left" into another place; 2D nnU-Net rotates up to 180


class GroupPolyLRScheduler(PolyLRScheduler):
    """nnU-Net's poly schedule, scaled per parameter group by the group's `lr_factor`."""

    def step(self, current_step=None):
        super().step(current_step)
        for group in self.optimizer.param_groups:
            group["lr"] *= group.get("lr_factor", 1.0)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


class nnUNetTrainerVL(nnUNetTrainer):
    """Base of the VL trainers; subclasses set `method`, build their network and text loss."""

    method: str = ""
    text_mode: str = "report"  # the _noText ablations train (and predict) with empty reports
    swap_words_when_mirroring: bool = True  # the _naiveMirror ablations mirror images but leave the words
    image_positions: bool = True  # position encodings relative to the whole image (the _patchPositions ablations: patch)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-3  # AdamW, see configure_optimizers
        self.text_plan = text_plan(self.plans_manager, self.configuration_manager)
        self.text_cache = load_text_cache(self.preprocessed_dataset_folder_base)
        self.text_mirror_axes: tuple[int, ...] = ()
        # the plans' lateral pairs: their label ids swap with a left-right flip (None: no pairs, mirroring as before)
        self.lateral: LateralSwap | None = lateral_swap_from_text_plan(self.text_plan, dataset_json["labels"])
        # region targets reach train_step as region channels (the last one the ignore label's): these swap instead
        self.lateral_region_channels: list[int] | None = None
        if self.lateral is not None and self.label_manager.has_regions:
            regions = self.label_manager.foreground_regions
            self.lateral_region_channels = self.lateral.region_permutation(regions) + (
                [len(regions)] if self.label_manager.ignore_label is not None else [])
        self.text_provider: TextProvider | None = None
        self.text_terms: list[dict[str, float]] = []
        add_text_terms_to_logger(self.logger, self.text_loss_terms())

    # ----- set-up -------------------------------------------------------------------------------
    def text_loss_terms(self) -> list[str]:
        """Names of the text loss terms logged per epoch (subclasses list theirs)."""
        raise NotImplementedError

    def build_text_loss(self) -> nn.Module:
        raise NotImplementedError

    def initialize(self) -> None:
        refuse_stock_pretrained_weights(self.__class__.__name__)
        encoder_path = resolve_encoder(self.text_plan["encoder"])
        tokenizer = load_tokenizer(encoder_path)
        super().initialize()
        network = unwrap(self.network)
        missing, unexpected = network.text_encoder.load_state_dict(
            load_pretrained_encoder(encoder_path).state_dict(), strict=False)
        missing = [k for k in missing if "pooler" not in k]
        if missing:
            raise RuntimeError(f"pretrained encoder {encoder_path} lacks weights {missing[:5]}")
        class_texts = [(name, self.text_cache.label_texts[name]) for name in self.text_plan["class_names"]]
        network.text_assets.tokenizer_files = tokenizer_files(tokenizer)
        network.text_assets.label_texts = class_texts
        self.text_provider = TextProvider(
            TextTokenizer(tokenizer, self.text_plan["max_tokens"], self.text_plan["max_label_tokens"],
                          self.text_plan["max_concept_tokens"]),
            class_texts, self.text_cache.reports, self.text_plan["direction_axes"],
            self.text_cache.report_token_ids, source=join(self.preprocessed_dataset_folder_base, "text"),
            fixed_side_names=dataset_fixed_side_names(self.dataset_json),
            lateral_pairs=self.text_plan.get("lateral_pairs") or ())
        self.text_loss = self.build_text_loss().to(self.device)
        if self.method == "tmca" and not any(self.text_cache.reports.values()):
            self.print_to_log_file("TMCA reads only reports and every report of this dataset is empty (class text "
                                   "only): its text carries no information here; nnUNetTrainerBiPVL reads class texts",
                                   also_print_to_console=True)
        warm_start = pretrained_weights_file()
        if warm_start is not None:
            loaded = load_image_unet_weights(network, warm_start)
            self.print_to_log_file(f"Warm start: {loaded} image U-Net tensors from {warm_start} (segmentation layers "
                                   f"included); text branch from the plans' encoder, fusion gates closed")
        self.print_to_log_file(f"Text branch: {self.method}, encoder '{self.text_plan['encoder']}', fusion "
                               f"{self.text_plan['fusion_reason']}")
        if self.lateral is not None:
            self.print_to_log_file(f"lateral pairs {[list(p) for p in self.lateral.names]}: their label ids swap when "
                                   f"axis {self.lateral.left_right_axis} (left-right) is mirrored, in training and "
                                   f"test-time mirroring")

    def configure_optimizers(self):
        """AdamW (as BiPVL-Seg trains) with nnU-Net's poly schedule.

        With nnU-Net's SGD the zero-initialised fusion gates open too slowly: the fusion weights get
        gradients scaled by the still-tiny gates, and a short schedule ends before the text is used.
        AdamW's per-parameter step sizes do not depend on that scale. The text encoder gets
        `text_lr_factor` times the learning rate (0: frozen); its word embeddings stay frozen unless the plans say
        `train_word_embeddings`. No AMSGrad (nnU-Net's nnUNetTrainerAdam uses it; BiPVL-Seg trains with
        plain AdamW): it would keep a third state tensor per trained weight.
        """
        network = unwrap(self.network)
        text_ids = {id(p) for p in network.text_encoder.parameters()}
        groups = [
            {"params": [p for p in network.parameters() if id(p) not in text_ids], "lr_factor": 1.0},
            {"params": [p for p in network.text_encoder.parameters() if p.requires_grad],
             "lr_factor": text_lr_factor(self.text_plan, self.method)},
        ]
        groups = [g for g in groups if g["params"]]  # a frozen encoder (factor 0) has none
        optimizer = torch.optim.AdamW(groups, self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, GroupPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        limit = np.deg2rad(MAX_ROTATION_DEGREES)
        rotation = (max(rotation[0], -limit), min(rotation[1], limit))
        # mirroring moves from the augmentation workers into train_step, where the report can follow it
        self.text_mirror_axes = tuple(mirror_axes or ())
        self.print_to_log_file(f"mirroring axes {self.text_mirror_axes} in train_step, report direction words "
                               f"{'swapped with them' if self.swap_words_when_mirroring else 'NOT swapped (ablation)'}")
        return rotation, dummy_2d, initial_patch_size, None

    def get_dataloaders(self):
        """nnU-Net's data loaders, whose batches also say where each patch lies in its image (`place`)."""
        with placed_data_loaders():
            return super().get_dataloaders()

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        unwrap(self.network).image_unet.decoder.deep_supervision = enabled

    # ----- steps ----------------------------------------------------------------------------------
    @contextmanager
    def _text_bound(self, text: TextInputs, text_loss: bool):
        network, seg_loss = self.network, self.loss
        bound = TextBoundNetwork(network, text, keep_aux=text_loss)
        terms: dict[str, torch.Tensor] = {}

        def loss_with_text(output, target):
            total = seg_loss(output, target)
            terms[SEGMENTATION_TERM] = total  # logged apart: the validation loss has no text terms
            terms.update(self.text_loss(bound.aux, target[0] if isinstance(target, list) else target))
            return total + terms["total"]

        self.network = bound
        if text_loss:
            self.loss = loss_with_text
        try:
            yield terms
        finally:
            self.network, self.loss = network, seg_loss

    def _mirror(self, batch: dict) -> list[tuple[int, ...]]:
        """Mirror each sample like nnU-Net's MirrorTransform (each allowed axis with p=0.5), in place (the patches'
        places too: a mirrored patch lies where it shows in the mirrored image); a left-right
        flip swaps the lateral pairs' label ids in every target (deep supervision included; region targets: the
        regions' channels) and, in a cascade, the pairs' one-hot channels of the previous stage's segmentation."""
        flips = [tuple(a for a in self.text_mirror_axes if torch.rand(1).item() < 0.5) for _ in batch["keys"]]
        if batch.get("place") is not None:
            batch["place"] = torch.stack([mirror_place(p, axes) for p, axes in zip(batch["place"], flips)])
        targets = batch["target"] if isinstance(batch["target"], list) else [batch["target"]]
        lateral = getattr(self, "lateral", None)
        for i, axes in enumerate(flips):
            if axes:
                dims = [a + 1 for a in axes]  # per-sample tensors are (c, *spatial)
                batch["data"][i] = torch.flip(batch["data"][i], dims)
                for t in targets:
                    t[i] = torch.flip(t[i], dims)
                if lateral is not None and lateral.flips_left_right(axes):
                    regions = getattr(self, "lateral_region_channels", None)
                    for t in targets:
                        t[i] = lateral.swap_labels(t[i]) if regions is None else permute(t[i], regions, dim=0)
                    if self.is_cascaded:
                        self._swap_previous_stage_channels(batch["data"], i, lateral)
        return flips

    def _swap_previous_stage_channels(self, data: torch.Tensor, i: int, lateral: LateralSwap) -> None:
        """A cascade's data ends with one one-hot channel per foreground label (the previous stage's segmentation)."""
        labels = list(self.label_manager.foreground_labels)
        first = data.shape[1] - len(labels)
        data[i, first:] = lateral.swap_channels(data[i, first:], labels, dim=0)

    def training_text(self, keys: list[str], flips: list[tuple[int, ...]]) -> TextInputs:
        """The batch's text after `_mirror`: the direction words of each sample's report and class texts swapped where
        their axis was flipped (a lateral pair's class texts keep their left-right words: its label ids swapped)."""
        return self.text_provider.inputs(keys, flips if self.swap_words_when_mirroring else None, self.text_mode)

    def _with_place(self, text: TextInputs, batch: dict) -> TextInputs:
        """The text with the batch's patch places (none for the _patchPositions ablations, or a batch without)."""
        place = batch.get("place") if self.image_positions else None
        return text if place is None else replace(text, place=place)

    def train_step(self, batch: dict) -> dict:
        flips = self._mirror(batch)
        text = self._with_place(self.training_text(list(batch["keys"]), flips), batch).to(self.device)
        with self._text_bound(text, text_loss=True) as terms:
            result = super().train_step(batch)
        result.update({k: v.detach().float().cpu().numpy() for k, v in terms.items() if k != "total"})
        return result

    def validation_step(self, batch: dict) -> dict:
        text = self._with_place(self.text_provider.inputs(list(batch["keys"]), mode=self.text_mode), batch)
        with self._text_bound(text.to(self.device), text_loss=False):
            return super().validation_step(batch)

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        for term in (SEGMENTATION_TERM, *self.text_loss_terms()):
            values = [float(o[term]) for o in train_outputs if term in o]
            value = float(np.mean(values)) if values else float("nan")
            if self.is_ddp:
                gathered = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, value)
                value = float(np.nanmean(gathered))
            self.logger.log(f"train_{term}", value, self.current_epoch)
            self.print_to_log_file(f"train_{term}", np.round(value, 4))

    # ----- validation and checkpoints ---------------------------------------------------------------
    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """nnU-Net's final validation with TextPredictor (the stock one cannot pass text to the network), cascade
        included: a cascaded configuration's data gets the previous stage's segmentation as one-hot channels, and
        each case's prediction is resampled and saved as input of every next stage."""
        from nnunetv2.configuration import default_num_processes
        from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder

        self.set_deep_supervision_enabled(False)
        self.network.eval()
        predictor = TextPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                  perform_everything_on_device=True, device=self.device, verbose=False,
                                  verbose_preprocessing=False, allow_tqdm=False, text_mode=self.text_mode,
                                  image_positions=self.image_positions)
        network = unwrap(self.network)
        predictor.manual_initialization(network, self.plans_manager, self.configuration_manager,
                                        [network.state_dict()], self.dataset_json, self.__class__.__name__,
                                        self.inference_allowed_mirroring_axes)
        predictor.set_text_provider(self.text_provider)
        predictor.on_case_logits = self._next_stage_exporter()
        output_folder = join(self.output_folder, "validation")
        os.makedirs(output_folder, exist_ok=True)
        _, val_keys = self.do_split()
        if self.is_ddp:
            val_keys = val_keys[self.local_rank::dist.get_world_size()]
        dataset_val = self.dataset_class(self.preprocessed_dataset_folder, val_keys,
                                         folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)

        def cases():
            for k in dataset_val.identifiers:
                self.print_to_log_file(f"predicting {k}")
                data, _, seg_prev, properties = dataset_val.load_case(k)
                data = np.asarray(data[:])
                if self.is_cascaded:
                    data = np.vstack((data, convert_labelmap_to_one_hot(
                        np.asarray(seg_prev[:]), self.label_manager.foreground_labels, output_dtype=data.dtype)))
                yield {"data": torch.from_numpy(data), "data_properties": properties,
                       "ofile": join(output_folder, k)}

        predictor.predict_from_data_iterator(cases(), save_probabilities, default_num_processes)
        if self.is_ddp:
            dist.barrier()
        if self.local_rank == 0:
            metrics = compute_metrics_on_folder(
                join(self.preprocessed_dataset_folder_base, "gt_segmentations"), output_folder,
                join(output_folder, "summary.json"), self.plans_manager.image_reader_writer_class(),
                self.dataset_json["file_ending"],
                self.label_manager.foreground_regions if self.label_manager.has_regions
                else self.label_manager.foreground_labels,
                self.label_manager.ignore_label, chill=True, num_processes=default_num_processes)
            for label in metrics["mean"]:
                self.logger.log_summary(f"final_val/class_{label}_dice", metrics["mean"][label]["Dice"])
            self.logger.log_summary("final_val/foreground_dice", metrics["foreground_mean"]["Dice"])
            self.print_to_log_file("Validation complete", also_print_to_console=True)
            self.print_to_log_file("Mean Validation Dice: ", metrics["foreground_mean"]["Dice"],
                                   also_print_to_console=True)
        self.set_deep_supervision_enabled(True)
        compute_gaussian.cache_clear()

    def _next_stage_exporter(self) -> Callable[[dict, torch.Tensor], None] | None:
        """None without next stages; else a function that saves a case's prediction, resampled to each next stage's
        preprocessed shape, to predicted_next_stage/<next stage>/ (where nnU-Net's cascade trainer reads it)."""
        from nnunetv2.configuration import default_num_processes
        from nnunetv2.inference.export_prediction import resample_and_save
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        next_stages = self.configuration_manager.next_stage_names
        if next_stages is None:
            return None
        for stage in next_stages:
            os.makedirs(join(self.output_folder_base, "predicted_next_stage", stage), exist_ok=True)

        def export(item: dict, logits: torch.Tensor) -> None:
            case = os.path.basename(item["ofile"])
            for stage in next_stages:
                folder = join(self.preprocessed_dataset_folder_base,
                              self.plans_manager.get_configuration(stage).data_identifier)
                try:
                    dataset_class = infer_dataset_class(folder)
                    data = dataset_class(folder, [case]).load_case(case)[0]
                except (FileNotFoundError, AssertionError):
                    self.print_to_log_file(f"Predicting next stage {stage} failed for case {case} because its "
                                           f"preprocessed file is missing! Run the preprocessing for {stage} first!")
                    continue
                output_file = join(self.output_folder_base, "predicted_next_stage", stage, case)
                resample_and_save(logits.cpu(), data.shape[1:], output_file, self.plans_manager,
                                  self.configuration_manager, item["data_properties"], self.dataset_json,
                                  default_num_processes, dataset_class)

        return export
