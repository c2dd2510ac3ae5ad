"""Fine-tune YOLO-World on defect boxes, offline, with class prompts encoded by the project's own CLIP.

`finetune_detector(DetectorTrainConfig(...))` writes <out>/best.pt (class names + text embeddings baked in:
`YOLOWorld(path).predict()` needs no text encoder) and <out>/best.json (classes, prompts, encoder, data hash,
zero-shot and fine-tuned metrics), and returns best.json's content. The command line is
`defect-vision train-detector` (defect_vision/cli/train_detector.py).

Interrupted runs: `resume=True` continues <out>/weights/last.pt; a run whose training finished but whose final
step (validation of best.pt, best.pt + best.json) was interrupted is completed without training again. A
checkpoint truncated by a kill is detected by loading it and replaced by the other one, with a warning.

This module is the orchestration; each part has its file: detector_config (the settings), detector_data (the YOLO
export and its checks), detector_text (prompts and their embeddings), detector_model (the start model),
detector_metrics (validation, history), detector_checkpoints (run folder, resume, final files), world_trainer
(the ultralytics trainer). Names other modules import from here stay importable from here.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from defect_vision.devices import ultralytics_device
from defect_vision.errors import ConfigError
from defect_vision.models.detector import YOLOE
from defect_vision.models.text_embeddings import RANDOM_WARNING
from defect_vision.offline import go_offline

# importable from here, as before the split (CLI, experiments, tests)
from defect_vision.training.detector_checkpoints import (  # noqa: F401
    KIND,
    ResumePlan,
    check_run_folder,
    finished_checkpoint,
    open_run_folder,
    plan_resume,
    read_run_state,
    save_final,
    trim_results,
    write_run_state,
)
from defect_vision.training.detector_config import (
    SEED_REPORT_DEFAULTS,  # noqa: F401
    DetectorTrainConfig,
    check_overrides,
)
from defect_vision.training.detector_data import (
    check_splits,
    data_hash,
    read_data_yaml,
    small_data_settings,
)
from defect_vision.training.detector_metrics import (
    box_metrics,
    evaluate_start_model,
    read_history,
    validate_checkpoint,
)
from defect_vision.training.detector_model import (
    WORLD_V2_URL,  # noqa: F401
    StartModel,
    start_model,
)
from defect_vision.training.detector_text import (  # noqa: F401
    class_embeddings,
    class_phrasings,
    class_prompts,
    prompts_file,
    text_encoder_device,
)

LOG = logging.getLogger("defect_vision.yolo_world")


def tuning_summary(config: DetectorTrainConfig, ckpt: dict, names: list[str], init) -> dict:
    """best.json's prompt_tuning block: on/off, settings and, when tuned, each class's drift (1 - cos) from CLIP."""
    if not config.tune_prompts:
        return {"tuned": False}
    from defect_vision.training.prompt_tuning import drift
    from defect_vision.training.prompt_tuning import tuned as tuned_table

    model = ckpt.get("ema") or ckpt.get("model")
    tuned = tuned_table(model)  # the text-model vectors (YOLOE's pe is their projection)
    return {"tuned": True, "reg": config.prompt_reg, "prompt_only": config.prompt_only,
            "drift": drift(tuned, init, names)}


def finetune_detector(config: DetectorTrainConfig, callbacks: dict | None = None) -> dict:
    """The whole stage; returns best.json's content. `callbacks` {event: [fn]} are added to the trainer (tests).

    Bad input raises DatasetError (or a subclass) before anything is written to `config.out`."""
    go_offline()
    t0 = time.time()
    overrides = check_overrides(config.overrides)
    data = read_data_yaml(config.data)
    names = [data["names"][i] for i in sorted(data["names"])]
    pfile = prompts_file(config)
    phrasings, category_ids = class_phrasings(names, config.coco, config.prompt_template, config.category, pfile)
    prompts = [ps[0] for ps in phrasings]
    check_splits(config.data, data)
    dhash = data_hash(config.data, data)
    device = ultralytics_device(config.device)
    if config.balanced and "," in device:
        raise ConfigError(f"{{balanced}} {{device}} {config.device}: class-balanced sampling is single-process; "
                           "train on one device, or drop {balanced}", "balanced", "device")
    if config.tune_prompts and "," in device:
        raise ConfigError(f"{{tune_prompts}} {{device}} {config.device}: prompt tuning is single-process; "
                           "train on one device", "tune_prompts", "device")
    out = config.out.resolve()
    plan = plan_resume(out) if config.resume else None
    if plan is None:
        check_run_folder(config, data)
    start = start_model(config)
    model_spec, weights_tag = start.spec, start.weights
    if start.segment:
        from defect_vision.training.yoloe_data import check_polygon_labels

        check_polygon_labels(config.data, data, model_spec)
    embeddings, enc = class_embeddings(config, phrasings, device, start.family, start.text_model)
    if config.text_encoder == "random" and config.encoder is None:
        print(f"WARNING: {RANDOM_WARNING}", file=sys.stderr)

    open_run_folder(out, plan)

    zero_shot = None
    if config.eval_zero_shot:
        LOG.info("zero-shot baseline of %s on the val split", model_spec)
        zero_shot = evaluate_start_model(start, config, names, embeddings, device, out / "zero_shot")

    metrics = None
    if plan is not None and plan.action == "finalize":
        LOG.info("%s: training finished (%d epochs) but its final step did not: validating best.pt and writing "
                 "best.pt + best.json, no training", out, plan.epochs)
        if config.plots and (out / "results.csv").is_file():
            from ultralytics.utils.plotting import plot_results

            plot_results(file=out / "results.csv")  # results.png, as at the end of training
    else:
        trainer = train(config, out, start, data, names, embeddings, device, overrides, plan, callbacks)
        if not trainer.ddp and trainer.validator is not None and trainer.validator.metrics is not None:
            metrics = box_metrics(trainer.validator, names)  # ultralytics' final validation of best.pt
    best_ckpt = finished_checkpoint(out)
    train_args = best_ckpt.get("train_args") or {}
    if metrics is None:
        metrics = validate_checkpoint(out / "weights" / "best.pt", config.data.resolve(), names,
                                      int(train_args.get("imgsz", config.imgsz)),
                                      max(1, int(train_args.get("batch", config.batch))),  # -1/0.x: AutoBatch
                                      device, config.workers, config.seed, config.plots, out, start.segment)
    meta = {
        "classes": names,
        "category_ids": category_ids,
        "prompts": prompts,
        "prompt_template": config.prompt_template,
        "phrasings": phrasings,
        "prompts_file": str(pfile) if pfile else None,
        "category": config.category,
        "text_encoder": enc["encoder"],
        "text_encoder_weights_sha256": enc["weights_sha256"],
        "data": str(config.data.resolve()),
        "data_hash": dhash,
        "metrics": {"zero_shot": zero_shot, "fine_tuned": metrics},
        "weights": weights_tag,
        "family": start.family,
        "segment": start.segment,
        "start_model": model_spec,
        "epochs": int(train_args.get("epochs", config.epochs)),
        "imgsz": int(train_args.get("imgsz", config.imgsz)),
        "balanced": bool(config.balanced),
        "balanced_loss": bool(config.balanced_loss),
        "prompt_tuning": tuning_summary(config, best_ckpt, names, embeddings),
        "seed": config.seed,
        "history": read_history(out / "results.csv"),
        "seconds": round(time.time() - t0, 1),
    }
    if meta["text_encoder"] == "random":
        meta["warning"] = RANDOM_WARNING
    save_final(best_ckpt, out, meta)
    write_run_state(out, "finished")
    return meta


def train(config: DetectorTrainConfig, out: Path, start: StartModel, data: dict, names: list[str], embeddings,
          device: str, overrides: dict, plan: ResumePlan | None, callbacks: dict | None):
    """ultralytics training (new or resumed) with DefectWorldTrainer (DefectYOLOETrainer for YOLOE); returns the
    finished trainer."""
    if start.family == YOLOE:
        from defect_vision.training.yoloe_trainer import DefectYOLOETrainer as Trainer
    else:
        from defect_vision.training.world_trainer import DefectWorldTrainer as Trainer

    train_args = dict(
        model=start.spec, task="segment" if start.segment else "detect", data=str(config.data.resolve()), epochs=config.epochs, imgsz=config.imgsz,
        batch=config.batch, device=device, workers=config.workers, optimizer=config.optimizer, lr0=config.lr0,
        cos_lr=config.cos_lr, seed=config.seed, deterministic=True, project=str(out.parent), name=out.name,
        exist_ok=True, plots=config.plots, val=True, pretrained=not config.from_scratch, verbose=True,
    )
    if config.freeze is not None:
        train_args["freeze"] = config.freeze
    train_args.update(small_data_settings(config.data, data, config.batch, config.epochs))
    train_args.update(overrides)
    if plan is not None:
        train_args["resume"] = str(out / "weights" / "last.pt")
    tune = {"reg": config.prompt_reg, "only": config.prompt_only} if config.tune_prompts else None
    trainer = Trainer(overrides=train_args, class_embeddings=dict(zip(names, embeddings)),
                                 balanced=config.balanced, tune_prompts=tune)
    from defect_vision.training.balanced_loss import detector_callbacks

    for event, fns in [*detector_callbacks(config.balanced_loss).items(), *(callbacks or {}).items()]:
        for fn in fns:
            trainer.add_callback(event, fn)
    trainer.train()
    if Path(trainer.save_dir).resolve() != out:
        raise RuntimeError(f"ultralytics wrote to {trainer.save_dir}, expected {out}")
    return trainer


def summary(meta: dict, best_pt: Path) -> str:
    """The one line a finished run prints."""
    ft, zs = meta["metrics"]["fine_tuned"], meta["metrics"]["zero_shot"]
    zs_txt = f" (zero-shot {zs['map50']:.3f})" if zs else ""
    return (f"{meta.get('family', 'yolo_world')}: {best_pt}: {len(meta['classes'])} classes, {meta['epochs']} epochs, "
            f"val box mAP50 {ft['map50']:.3f}{zs_txt}, mAP50-95 {ft['map50_95']:.3f}, "
            f"text encoder {meta['text_encoder']}, {meta['weights']} weights, {meta['seconds']:.0f} s")


if __name__ == "__main__":  # the old entry point: fail loudly instead of doing nothing
    sys.exit("error: this module is the library; the command is `defect-vision train-detector` "
             "(python -m defect_vision train-detector, scripts/finetune_yolo_world.sh)")
