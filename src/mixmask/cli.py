"""The ``mixmask`` command: parse arguments, build the config, call the task. Heavy imports happen inside commands
so that ``mixmask --help`` answers at once."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mixmask import __version__


def _config_and_overrides(args: list[str]) -> tuple[str | None, list[str]]:
    """Split ``[CONFIG] [key=value ...]``: the config file is the one argument without '='."""
    files = [a for a in args if "=" not in a]
    if len(files) > 1:
        raise SystemExit(f"error: give at most one config file, got {files}; overrides look like key.sub=value")
    return (files[0] if files else None), [a for a in args if "=" in a]


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from mixmask.config import load_config, to_dict

    path, overrides = _config_and_overrides(args.args)
    cfg = load_config(path, overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def _run_config(args: argparse.Namespace):
    """The config of a training command: CONFIG + overrides, or with --resume the run's own config + overrides."""
    from mixmask.config import load_config
    from mixmask.engine.run_dir import resume_config

    path, overrides = _config_and_overrides(args.args)
    if args.resume:
        if path:
            raise SystemExit("error: with --resume the run's own config.yaml is used; give only key=value overrides")
        return resume_config(args.resume, overrides)
    return load_config(path, overrides)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from mixmask.tasks.pretrain import pretrain

    pretrain(_run_config(args), out=args.out, resume=args.resume)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from mixmask.tasks.finetune import finetune

    finetune(_run_config(args), out=args.out, resume=args.resume)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mixmask.config import ConfigError, load_config
    from mixmask.tasks.evaluate import evaluate, evaluate_model, evaluation_config

    if (args.model is None) != (args.weights is None):
        raise ConfigError("evaluate: --model and --weights go together (a timm model name and its weights file)")
    runs = [a for a in args.args if "=" not in a and Path(a).is_dir()]
    rest = [a for a in args.args if a not in runs]
    if len(runs) > 1:
        raise SystemExit(f"error: give one run folder, got {runs}")
    path, overrides = _config_and_overrides(rest)
    if args.model is not None:
        if runs:
            raise ConfigError(f"evaluate: give a run folder or --model/--weights, not both ({runs[0]})")
        evaluate_model(load_config(path, overrides), args.model, args.weights, out=args.out)
        return 0
    evaluate(evaluation_config(runs[0] if runs else None, path, overrides), out=args.out)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mixmask.tasks.export import export

    info = export(args.run_dir, args.out)
    print(
        f"{info['tensors']} tensors of {info['backbone']} ({info['task']} run, {info['num_classes']} classes) -> {args.out}"
    )
    print(f"load with timm:\n  {info['timm']}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from mixmask.tasks.plan import plan_text
    from mixmask.tasks.sweep import load_sweep, run_sweep

    sweep = load_sweep(args.sweep)
    out = args.out or str(Path("sweeps") / sweep.name)
    if args.dry_run:
        print(f"plan for {out}:")
        print(plan_text(sweep, out))
        return 0
    unfinished = run_sweep(sweep, out, jobs=args.jobs, only=args.variant, executor=args.executor)
    print(f"sweep {'finished' if not unfinished else f'has {unfinished} unfinished variant(s)'}: {out}")
    if not unfinished and args.variant is None:
        print(f"report: mixmask report {out}")
    return 1 if unfinished else 0


def cmd_report(args: argparse.Namespace) -> int:
    from mixmask.tasks.report import report

    page = report(args.sweep_dir, extra_runs=args.runs, out=args.out, references=args.reference or ())
    print(f"report: {Path(page).resolve()}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mixmask.tasks.demo import demo

    demo(args.out, jobs=args.jobs, dry_run=args.dry_run)
    return 0


def cmd_data_shapesx(args: argparse.Namespace) -> int:
    from mixmask.data.shapesx import export_shapesx

    counts = export_shapesx(
        args.out,
        size=args.size,
        n_train=args.train,
        n_test=args.test,
        n_cue_conflict=args.cue_conflict,
        seed=args.seed,
        progress=not args.quiet,
    )
    for split, count in counts.items():
        print(f"{split:>13}: {count} images")
    print(f"ShapesX written to {Path(args.out).resolve()}")
    return 0


def cmd_data_grid(args: argparse.Namespace) -> int:
    from mixmask.data.shapesx import example_grid

    path = example_grid(args.out, size=args.size, seed=args.seed)
    print(f"example grid written to {path}")
    return 0


def cmd_data_imagenet100(args: argparse.Namespace) -> int:
    from mixmask.data.imagenet100 import build_imagenet100, format_summary

    if args.resize is None and (args.workers is not None or args.quality != 90):
        raise SystemExit("error: --quality and --workers set how --resize copies are written; add --resize S")
    summary = build_imagenet100(
        args.imagenet_root,
        args.out,
        classes=args.classes,
        val_labels=args.val_labels,
        progress=not args.quiet,
        resize=args.resize,
        quality=args.quality,
        workers=args.workers,
    )
    print(format_summary(summary))
    print(f"ImageNet-100 written to {Path(args.out).resolve()}")
    return 0


def cmd_data_resize(args: argparse.Namespace) -> int:
    from mixmask.data.resize import resize_tree

    summary = resize_tree(args.src, args.out, args.resize, args.quality, workers=args.workers, progress=not args.quiet)
    print(
        f"{summary['images']:,} images of {summary['source']} -> {summary['out']} (shorter side <= {args.resize} px, "
        f"JPEG quality {args.quality}): {summary['written']:,} written, {summary['kept']:,} kept from an earlier run"
    )
    for item in summary["unreadable"]:
        print(f"unreadable (copied as it is): {item['path']}: {item['error']}")
    return 0


def add_resize_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--resize",
        type=int,
        required=required,
        default=None,
        metavar="S",
        help="write copies with the shorter side at most S pixels (file names kept; 256 or 288 for 224-px training)"
        + ("" if required else " instead of symlinks"),
    )
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of resized copies (default 90)")
    parser.add_argument("--workers", type=int, default=None, help="processes that resize (default: every core)")


def cmd_data_check(args: argparse.Namespace) -> int:
    from mixmask.config import load_config
    from mixmask.data import check_dataset

    path, overrides = _config_and_overrides(args.args)
    cfg = load_config(path, overrides)
    report = check_dataset(cfg.data, progress=not args.quiet)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    for split, result in report["splits"].items():
        print(
            f"{split}: {result['images']} images in {len(result['per_class'])} classes, "
            f"{len(result['unreadable'])} unreadable"
        )
        for bad in result["unreadable"][:20]:
            print(f"  unreadable: {bad['path']} ({bad['error']})")
    return 1 if any(r["unreadable"] for r in report["splits"].values()) else 0


def _safetensors_name(text: str) -> str:
    if not text.endswith(".safetensors"):
        raise argparse.ArgumentTypeError(f"export writes safetensors; give a name ending in .safetensors, not {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixmask",
        description="Masked image modeling with free and mixed masking, and the evaluations that tell models apart.",
    )
    parser.add_argument("--version", action="version", version=f"mixmask {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    config = commands.add_parser(
        "config",
        help="print the fully resolved config (defaults + CONFIG + overrides), or the error that stops it",
        description="Print the resolved config. Arguments: [CONFIG.yaml] [key.sub=value ...]",
    )
    config.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    config.set_defaults(func=cmd_config)

    def training_command(name: str, help_text: str, func) -> None:
        command = commands.add_parser(
            name,
            help=help_text,
            description="Arguments: CONFIG.yaml [key.sub=value ...]. Writes one run folder and prints where it went.",
        )
        command.add_argument("args", nargs="*", metavar="CONFIG|key=value")
        command.add_argument("--out", default=None, help="run folder (default: train.out_dir/train.name)")
        command.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run where it stopped")
        command.set_defaults(func=func)

    training_command(
        "pretrain",
        "self-supervised pretraining: A2MIM with free or mixed masking, SimMIM, MAE, MoCo v3 (CPU, one GPU or torchrun)",
        cmd_pretrain,
    )
    training_command(
        "finetune",
        "train a classifier from a pretraining run, a weights file or scratch (or linear / kNN probe)",
        cmd_finetune,
    )

    evaluate = commands.add_parser(
        "evaluate",
        help="accuracy, ImageNet-X factors, occlusion, CKA invariance, shape bias, reconstructions of a run",
        description="Arguments: RUN_DIR [CONFIG.yaml] [key.sub=value ...] (or a CONFIG that sets eval.run). The run's "
        "own config is the base; CONFIG and overrides change it (e.g. eval.cka=false). Writes results.json and plots.",
    )
    evaluate.add_argument("args", nargs="*", metavar="RUN_DIR|CONFIG|key=value")
    evaluate.add_argument(
        "--out", default=None, help="output folder (default: RUN_DIR/evaluation, or evaluation-MODEL for --model)"
    )
    evaluate.add_argument(
        "--model", default=None, help="a timm classifier to evaluate instead of a run (with --weights)"
    )
    evaluate.add_argument(
        "--weights",
        default=None,
        help="its weights with their head: .safetensors or a weights-only .pth (module./backbone./encoder. prefixes "
        "are taken off)",
    )
    evaluate.set_defaults(func=cmd_evaluate)

    sweep = commands.add_parser(
        "sweep",
        help="run a study: every variant through pretrain, finetune and evaluate, recorded in a results store",
        description="Runs (or resumes) every variant of SWEEP.yaml into one folder with a SQLite results store; "
        "finished stages are skipped and interrupted ones resume from their checkpoints.",
    )
    sweep.add_argument("sweep", metavar="SWEEP.yaml")
    sweep.add_argument("--out", default=None, help="sweep folder (default: sweeps/<name>)")
    sweep.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="variants run at once, each in its own process (default 1); with --executor: jobs in flight "
        "(default: no limit)",
    )
    sweep.add_argument(
        "--executor",
        choices=["slurm", "local"],
        default=None,
        help="run every stage as a job through submitit (pip install 'mixmask[slurm]'): on a SLURM cluster, with "
        "the sweep file's `slurm` resources, or as local processes",
    )
    sweep.add_argument("--variant", default=None, metavar="NAME", help="run only this variant")
    sweep.add_argument("--dry-run", action="store_true", help="print the plan with estimated times and stop")
    sweep.set_defaults(func=cmd_sweep)

    report = commands.add_parser(
        "report", help="tables, figures and one self-contained HTML page from a sweep folder (and extra runs)"
    )
    report.add_argument("sweep_dir", metavar="SWEEP_DIR")
    report.add_argument(
        "runs",
        nargs="*",
        metavar="RUN_DIR",
        help="more evaluated runs to include as variants, named after their folder (<variant>/seed<k>/<stage>: "
        "<variant>, the seeds of one name grouped as its replicates)",
    )
    report.add_argument("--out", default=None, help="output folder (default: SWEEP_DIR/report)")
    report.add_argument(
        "--reference",
        action="append",
        metavar="VARIANT",
        help="the variant every other is compared with (default: the sweep's `reference`, else scratch); given "
        "more than once, each variant is compared with the one of its own backbone",
    )
    report.set_defaults(func=cmd_report)

    demo = commands.add_parser(
        "demo", help="the Mix-and-Mask study on ShapesX, two seeds (CPU, about 8 minutes), then its HTML report"
    )
    demo.add_argument("--out", default="mixmask-demo", help="sweep folder (default: mixmask-demo); rerun to resume")
    demo.add_argument("--jobs", type=int, default=1, help="variants run at once, each in its own process")
    demo.add_argument("--dry-run", action="store_true", help="print the plan with estimated times and stop")
    demo.set_defaults(func=cmd_demo)

    export = commands.add_parser(
        "export", help="write a run's network as a safetensors file that timm.create_model loads"
    )
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--out", required=True, type=_safetensors_name, help="FILE.safetensors")
    export.set_defaults(func=cmd_export)

    data = commands.add_parser("data", help="make, build and check data sets")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    shapesx = data_commands.add_parser(
        "shapesx", help="export the embedded ShapesX benchmark as class folders of PNGs with annotations"
    )
    shapesx.add_argument("--out", required=True, help="output folder")
    shapesx.add_argument("--size", type=int, default=64, help="image size in pixels, 32..224 (default 64)")
    shapesx.add_argument("--train", type=int, default=None, help="number of train images (default: split default)")
    shapesx.add_argument("--test", type=int, default=None, help="number of test images (default: split default)")
    shapesx.add_argument("--cue-conflict", type=int, default=None, help="number of cue-conflict images")
    shapesx.add_argument("--seed", type=int, default=0)
    shapesx.add_argument("--quiet", action="store_true", help="no progress bar")
    shapesx.set_defaults(func=cmd_data_shapesx)

    grid = data_commands.add_parser("grid", help="draw a PNG grid of ShapesX examples with their factors")
    grid.add_argument("--out", required=True, help="PNG file to write")
    grid.add_argument("--size", type=int, default=96, help="size of each example in pixels (default 96)")
    grid.add_argument("--seed", type=int, default=0)
    grid.set_defaults(func=cmd_data_grid)

    imagenet100 = data_commands.add_parser(
        "imagenet100", help="build ImageNet-100 as symlinks from a local ImageNet-1k tree"
    )
    imagenet100.add_argument("--imagenet-root", required=True, help="ImageNet-1k folder with train/ and val/")
    imagenet100.add_argument("--out", required=True, help="output folder (train/ and val/ of symlinks)")
    imagenet100.add_argument(
        "--classes",
        default="cmc",
        help="cmc (default; the CMC list used in SSL work), kaggle (the list the Mix-and-Mask paper evaluated) "
        "or a text file with one wnid per line",
    )
    imagenet100.add_argument("--val-labels", default=None, help="label file for a flat val/ folder")
    imagenet100.add_argument("--quiet", action="store_true", help="no progress bar")
    add_resize_arguments(imagenet100, required=False)
    imagenet100.set_defaults(func=cmd_data_imagenet100)

    resize = data_commands.add_parser(
        "resize", help="resized copies of any image tree (class folders), file names and relative paths kept"
    )
    resize.add_argument("--src", required=True, help="folder of images (e.g. with train/ and val/ class folders)")
    resize.add_argument("--out", required=True, help="output folder (created; a stopped run resumes)")
    resize.add_argument("--quiet", action="store_true", help="no progress bar")
    add_resize_arguments(resize, required=True)
    resize.set_defaults(func=cmd_data_resize)

    check = data_commands.add_parser(
        "check",
        help="read every image of a config's train and val data; report counts and unreadable files",
        description="Arguments: [CONFIG.yaml] [key.sub=value ...]. Exits 1 when an image cannot be read.",
    )
    check.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    check.add_argument("--out", default=None, help="also write the report as JSON here")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(func=cmd_data_check)
    return parser


def _os_error_line(error: OSError) -> str:
    """An OSError as one line: our own messages as they are, the system's as `what: which file`."""
    if error.strerror and error.filename:
        other = f" -> {error.filename2}" if error.filename2 else ""
        return f"{error.strerror}: {error.filename}{other}"
    return str(error) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input (a config, a file, a folder, the disk) ends in one ``mixmask: error:`` line and
    exit status 2; anything else is a bug and keeps its traceback."""
    from mixmask.config import ConfigError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides after an option (`finetune CONFIG --out X a.b=1`) belong to the positional arguments
        if not hasattr(args, "args") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.args = [*args.args, *extra]
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except KeyboardInterrupt:  # checkpoints and the store are written atomically: nothing is half-written
        print(
            "mixmask: interrupted; run the same command again to resume (a single run: --resume RUN_DIR)",
            file=sys.stderr,
        )
        return 130
    except ConfigError as error:
        print(f"mixmask: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a missing or unwritable file or folder, a full disk: the message names it
        print(f"mixmask: error: {_os_error_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:
        from mixmask.data.common import DataError
        from mixmask.engine.checkpoint import CheckpointError
        from mixmask.engine.run_dir import RunDirError
        from mixmask.engine.trainer import TrainingDiverged
        from mixmask.evaluation.imagenet_x import PredictionError
        from mixmask.models.classifier import WeightsError
        from mixmask.results import RecordError
        from mixmask.store import StoreError

        bad_input = (
            DataError,
            TrainingDiverged,
            PredictionError,
            CheckpointError,
            RunDirError,
            WeightsError,
            StoreError,
            RecordError,
        )
        if not isinstance(error, bad_input):
            raise
        print(f"mixmask: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
