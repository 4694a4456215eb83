"""`imgsynth classify ...`: train a classifier on an ImageSet and score it on a test set."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from imgsynth.compute import check_device

app = typer.Typer(no_args_is_help=True)

# imgsynth.classifier.ClassifierConfig's defaults, shown in --help without importing torch (a test keeps
# them in step); the options stay None by default so the library's value is the one used.
LIBRARY_DEFAULTS = {"epochs": 6, "batch_size": 64, "lr": 0.01, "width": 16}


@app.command("train")
def train_command(
    train_set: Path = typer.Argument(..., help="ImageSet to train on."),
    out: Path = typer.Argument(..., help="Checkpoint folder to create (model.safetensors + classifier.json)."),
    arch: str = typer.Option("resnet18_small", help="'resnet18_small' (16-64 px) or a torchvision model name."),
    epochs: Optional[int] = typer.Option(None, help=f"Training epochs (default: {LIBRARY_DEFAULTS['epochs']})."),
    seed: int = typer.Option(0, help="Seed of weight init, shuffling and augmentation."),
    batch_size: Optional[int] = typer.Option(None, help=f"Batch size (default: {LIBRARY_DEFAULTS['batch_size']})."),
    lr: Optional[float] = typer.Option(None, help=f"Peak learning rate (default: {LIBRARY_DEFAULTS['lr']:g})."),
    width: Optional[int] = typer.Option(None, help=f"Base width of resnet18_small (default: "
                                                 f"{LIBRARY_DEFAULTS['width']})."),
    image_size: Optional[int] = typer.Option(None, help="Square input size (default: the set's, or the model's)."),
    augment: bool = typer.Option(True, help="Light affine augmentation."),
    use_weights: bool = typer.Option(False, help="Weigh each image's loss by the set's training weights (its "
                                                 "'weight' column); without it they are ignored."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 … (default: cuda if available)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train a classifier on TRAIN_SET and write its checkpoint to OUT."""
    check_device(device)  # before torch, data or weights load
    # torch is imported here, not at module level, so `imgsynth --help` stays fast.
    from imgsynth.classifier import ClassifierConfig, train_classifier
    from imgsynth.outputs import CLASSIFIER, claim_output
    from imgsynth.structured_files import read_json_object

    claim_output(out, CLASSIFIER, [train_set])
    options = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "width": width, "image_size": image_size}
    config = ClassifierConfig(arch=arch, seed=seed, augment=augment, device=device, use_weights=use_weights,
                              **{k: v for k, v in options.items() if v is not None})
    checkpoint = train_classifier(train_set, out, config, progress=progress)
    training = read_json_object(checkpoint / "classifier.json")["training"]
    typer.echo(f"checkpoint: {checkpoint}")
    typer.echo(f"trained {config.epochs} epochs in {training['seconds']:.1f}s on {training['device']}: "
               f"final loss {training['final_loss']:.4f}, train accuracy {training['final_accuracy']:.4f}")


@app.command("eval")
def eval_command(
    checkpoint: Path = typer.Argument(..., help="Classifier checkpoint folder."),
    test_set: Path = typer.Argument(..., help="Labeled ImageSet to score on (classes matched by name)."),
    out: Optional[Path] = typer.Option(None, help="Folder for report.json, confusion.csv and confusion.png."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda … (default: cuda if available)."),
) -> None:
    """Score CHECKPOINT on TEST_SET: accuracy, macro-F1 and per-class accuracy."""
    check_device(device)  # before the checkpoint or the set loads
    from imgsynth.classifier import evaluate_classifier, load_classifier
    from imgsynth.classifier.evaluation import CONFUSION_CSV, CONFUSION_PNG, REPORT
    from imgsynth.outputs import claim_report_folder

    if out is not None:
        claim_report_folder(out, [REPORT, CONFUSION_CSV, CONFUSION_PNG], [checkpoint, test_set])
    report = evaluate_classifier(load_classifier(checkpoint, device=device), test_set, out)
    typer.echo(f"accuracy  {report.accuracy:.4f}\nmacro-F1  {report.macro_f1:.4f}\nimages    {report.n}")
    width = max(len("class"), *(len(c) for c in report.classes))
    support = dict(zip(report.classes, report.confusion.sum(axis=1).tolist()))
    typer.echo(f"\n{'class':<{width}}  {'n':>6}  {'accuracy':>8}  {'F1':>6}")
    for name, accuracy in report.per_class_accuracy.items():
        typer.echo(f"{name:<{width}}  {support[name]:>6}  {accuracy:>8.4f}  {report.per_class_f1[name]:>6.4f}")
    if report.missing_classes:
        typer.echo(f"\nclasses with no test images: {', '.join(report.missing_classes)}")
    if out is not None:
        typer.echo(f"\nreport written to {out}")
