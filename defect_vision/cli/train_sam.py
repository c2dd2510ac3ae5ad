"""`defect-vision train-sam`: fine-tune SAM's mask decoder on a converted category's box prompts
(scripts/finetune_sam.sh and finetune/sam.py run this command; under torchrun it trains with DDP)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from defect_vision.cli.common import CategoryPaths, add_force, parser, run_command

if TYPE_CHECKING:  # the training library is imported only when the command runs
    from defect_vision.training.sam_config import SamTrainConfig

DESCRIPTION = (
    "Fine-tune SAM's mask decoder (image encoder frozen, embeddings cached on disk in fp16) on the box prompts "
    "of `defect-vision convert` (datasets/sam/<category>/prompts_{train,val}.json). Writes <out>/best.pth, last.pth "
    "(plain state_dicts that segment_anything.sam_model_registry[model_type](checkpoint=...) loads), best.json and "
    "resume.pt. Runs under `torchrun --nproc_per_node N` with DDP.")
EPILOG = (
    "scripts/finetune_sam.sh takes the same options; NPROC=N there runs N processes under torchrun "
    "(DDP: nccl on GPUs, gloo on CPU; each rank uses its own GPU, cuda:<local rank>). --resume continues after the "
    "last finished epoch (resume.pt) in --out. A new run's --out must be absent, empty or a previous train-sam "
    "output (else --force), and never a folder holding the prompts.")


def build_parser(prog: str) -> argparse.ArgumentParser:
    from defect_vision.models.checkpoints import MODEL_TYPES
    from defect_vision.training.self_training import MIN_AGREEMENT

    p = parser(prog, DESCRIPTION, EPILOG)
    p.add_argument("--category", required=True, help="MVTec category (names the default paths)")
    p.add_argument("--prompts", type=Path, help="folder with prompts_{train,val}.json (default: datasets/sam/<category>)")
    p.add_argument("--model-type", default="vit_b", choices=MODEL_TYPES, help="SAM family and size: vit_b|vit_l|vit_h (SAM), mobile_sam (MobileSAM), sam2.1_t|s|b+|l and sam2_* "
                        "(SAM 2); vit_tiny, mobile_sam_test, sam2.1_test: small test configs")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, help="start weights (default: weights/<official file> of --model-type)")
    src.add_argument("--from-scratch", action="store_true", help="random-init SAM: smoke runs only, masks are meaningless")
    p.add_argument("--epochs", type=int, default=10, help="training epochs after the epoch-0 validation of the start model")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--warmup", type=float, default=0.05, help="linear warm-up, as a fraction of all steps (then cosine to 0)")
    p.add_argument("--clip-grad", type=float, default=1.0, help="gradient norm clipping (0: off)")
    p.add_argument("--batch-images", type=int, default=4, help="images per optimizer step (all instances of each image)")
    p.add_argument("--jitter", type=float, default=0.1, help="box noise std as a fraction of the box side")
    p.add_argument("--jitter-max", type=float, default=20.0, help="box noise clipped to this many pixels")
    p.add_argument("--points", action="store_true", help="also give the instance's point prompts with the box")
    p.add_argument("--train-prompt-encoder", action="store_true", help="train the prompt encoder too (default: frozen)")
    p.add_argument("--multimask", action="store_true", help="multimask_output=True; the loss takes each instance's best mask")
    p.add_argument("--mask-threshold", type=float, default=0.0, help="logit threshold for val masks (SamPredictor's)")
    p.add_argument("--device", default="auto", help="auto (cuda if available, fp16 autocast there), cpu, cuda, cuda:N")
    p.add_argument("--out", type=Path, help="output folder (default: runs/<category>/sam)")
    p.add_argument("--cache-dir", type=Path, help="embedding cache (default: <out>/embeddings)")
    p.add_argument("--resident-mb", type=float, default=8192,
                   help="cached embeddings kept on the training device after their first read (MB; vit_b: 2 MB "
                        "per image); the rest are read from --cache-dir every step")
    p.add_argument("--resume", action="store_true", help="continue the run in --out after its last finished epoch")
    add_force(p)
    p.add_argument("--seed", type=int, default=0, help="seed for init (--from-scratch), shuffling and box jitter")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--pseudo", type=Path, default=None,
                   help="a train-detector --unlabelled run folder (or its pseudo_labels.json): its last round's pseudo "
                        "boxes, with the start SAM's masks, become extra training instances where mask and box agree")
    p.add_argument("--pseudo-agreement", type=float, default=MIN_AGREEMENT,
                   help="with --pseudo: keep a pseudo box only when the IoU of the box with its mask's tight box is "
                        "at least this")
    return p


def config_from_args(a: argparse.Namespace) -> SamTrainConfig:
    """The SamTrainConfig of parsed options (paths defaulted from --category)."""
    from defect_vision.training.sam_config import SamTrainConfig

    paths = CategoryPaths(a.category)
    out = a.out or paths.sam_run
    return SamTrainConfig(
        prompts=a.prompts or paths.format_dir("sam"), out=out, category=a.category, cache_dir=a.cache_dir,
        model_type=a.model_type, checkpoint=a.checkpoint, from_scratch=a.from_scratch, epochs=a.epochs, lr=a.lr,
        weight_decay=a.weight_decay, warmup=a.warmup, clip_grad=a.clip_grad, batch_images=a.batch_images,
        jitter=a.jitter, jitter_max=a.jitter_max, points=a.points, train_prompt_encoder=a.train_prompt_encoder,
        multimask=a.multimask, mask_threshold=a.mask_threshold, device=a.device, resident_mb=a.resident_mb,
        resume=a.resume, force=a.force,
        seed=a.seed, quiet=a.quiet)


def summary_line(result: dict, out: Path) -> str:
    images = result["data"]["train_images"] + result["data"]["val_images"]
    return (f"sam: {result['model_type']} ({result['weights']}) {result['epochs']} epochs, val mask IoU "
            f"{result['val_iou_start']:.4f} -> {result['val_iou_best']:.4f} (best epoch {result['best_epoch']}), "
            f"encoder ran {result['encoder_calls']}x for {images} images, -> {out / 'best.pth'}")


def main(argv: list[str] | None = None, prog: str = "defect-vision train-sam") -> int:
    p = build_parser(prog)
    a = p.parse_args(argv)
    if a.epochs < 0 or a.batch_images < 1:
        p.error("--epochs must be >= 0 and --batch-images >= 1")

    def body() -> None:
        from defect_vision.errors import DatasetError
        from defect_vision.training.sam import finetune_sam

        config = config_from_args(a)
        if a.pseudo is not None:
            from defect_vision.errors import ConfigError

            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise DatasetError("--pseudo: single process only (not under torchrun)")
            from defect_vision.experiments.self_training import finetune_sam_with_pseudo

            try:
                result = finetune_sam_with_pseudo(config, a.pseudo, a.pseudo_agreement)
            except ConfigError as exc:
                raise DatasetError(exc.flag_message()) from None
        else:
            result = finetune_sam(config)
        if int(os.environ.get("RANK", "0")) == 0:
            print(summary_line(result, config.out))

    return run_command(body, a.out or CategoryPaths(a.category).sam_run)
