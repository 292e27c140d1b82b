"""The `difflab` command: headless subcommands over the engine.

torch and diffusers are imported only by the commands that train, so `difflab
--help`, `difflab recipes` and `difflab recipe check` answer at once.
Exit codes: 0 ok, 1 the job failed, 2 bad input, 130 stopped by Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import traceback
from pathlib import Path

from rich.console import Console
from rich.table import Table

from difflab import __version__
from difflab.cli.report import print_error, report_internal_error, run_job
from difflab.errors import DifflabError, InputError, RecipeError
from difflab.recipe.registry import CHAPTERS, DEVICES, RECIPE_CHAPTERS, sampler_help

EXIT_BAD_INPUT = 2
SAMPLER_HELP = f"a sampler that fits the model's schedule: {sampler_help()}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="difflab", usage="difflab [RECIPE] | difflab COMMAND ...",
        description="A terminal lab for diffusion models, step by step. With no command (or just a "
                    "recipe) it opens the lab in the terminal.",
        epilog="Start with: difflab recipes, then difflab run from-scratch")
    parser.add_argument("--version", action="version", version=f"difflab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="replay a recipe headless into a run directory")
    run.add_argument("recipe", nargs="?", help="recipe file, or the name of a built-in recipe")
    run.add_argument("--out", type=Path, help="run directory (default: runs/<recipe>-<date>-<time>)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a recipe value, e.g. --set train.lr=2e-4 (repeatable)")
    run.add_argument("--device", choices=list(DEVICES), help="override the recipe's device")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run")
    run.add_argument("--profile", metavar="NAME",
                     help="lay the recipe's [profiles.NAME] over it first, e.g. --profile smoke (CI's quick check)")

    recipe = commands.add_parser("recipe", help="check or show recipe files")
    recipe_commands = recipe.add_subparsers(dest="recipe_command", metavar="ACTION", required=True)
    check = recipe_commands.add_parser("check", help="validate recipe files (exit 2 if any is bad)")
    check.add_argument("files", nargs="+", help="recipe files or built-in names")
    show = recipe_commands.add_parser("show", help="print a recipe fully resolved, every default written out")
    show.add_argument("file", help="recipe file or built-in name")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.add_argument("--profile", metavar="NAME", help="show the recipe with its [profiles.NAME] laid over it")

    sample = commands.add_parser("sample", help="sample from a run directory or a saved diffusers pipeline")
    sample.add_argument("run_dir", nargs="?", type=Path, help="a run directory (its recipe says how to sample)")
    sample.add_argument("--pipeline", metavar="PATH_OR_HUB_ID",
                        help="a DDPM-style pipeline folder (save_pretrained) or hub id instead of a run")
    sample.add_argument("--sampler", help=SAMPLER_HELP)
    sample.add_argument("--steps", type=int, help="sampling steps")
    sample.add_argument("--eta", type=float, help="ddim: 0 deterministic … 1 as noisy as DDPM")
    sample.add_argument("--seed", type=int, help="seed of the starting noise")
    sample.add_argument("--num-images", type=int, help="images in the grid (in each row of a sweep)")
    sample.add_argument("--class-label", dest="class_labels", type=int, action="append", metavar="CLASS",
                        help="class-conditional: sample this class (repeatable: the classes in turn)")
    sample.add_argument("--guidance-scale", type=float,
                        help="classifier-free guidance: 0 unconditional, 1 the class alone, >1 stronger")
    sample.add_argument("--sweep", metavar="KEY=V1,V2,...",
                        help="one labelled row per value in one grid: guidance_scale=0,1,3,7, "
                             "guidance.scale=0,20,40, sampler=ddim,euler, class=all, checkpoint=all")
    sample.add_argument("--grid", choices=["classes"],
                        help="classes: every class (rows) x --num-images seeds' noise (columns, default 8)")
    sample.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sample.add_argument("--out", type=Path, help="output folder (default: RUN/samples, or samples/ for a pipeline)")
    sample.add_argument("--device", choices=list(DEVICES), default="auto")

    evaluate = commands.add_parser(
        "eval", help="measure a run's sample quality against the dataset's reference classifier",
        description="Sample a finished run and measure the samples: normalised Fréchet distance (0 = held-out "
                    "real images, 1 = noise), classifier confidence, class entropy. Writes them into the run's "
                    "summary.json. With --sweep-steps, one row per step count.")
    evaluate.add_argument("run_dir", type=Path, help="a finished run directory")
    evaluate.add_argument("--samples", type=int, help="images to generate (default: the recipe's eval.num_samples)")
    evaluate.add_argument("--sampler", help=SAMPLER_HELP)
    evaluate.add_argument("--steps", type=int, help="sampling steps")
    evaluate.add_argument("--sweep-steps", metavar="N,N,...", help="measure each step count, e.g. 10,20,50,100")
    evaluate.add_argument("--inception", action=argparse.BooleanOptionalAction, default=None,
                          help="standard Inception FID (default: when torch-fidelity and its weights are here)")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    evaluate.add_argument("--device", choices=list(DEVICES), default="auto")

    invert = commands.add_parser(
        "invert", help="DDIM inversion: images back to their noise, reconstructions, edits, error per step count",
        description="Run the deterministic DDIM sampler backwards from dataset images (or PNG/JPEG files) to "
                    "noise, sample them back, and measure MSE/PSNR against the originals. Writes RUN/inversion/. "
                    "Settings start from the run recipe's [invert] section.")
    invert.add_argument("run_dir", nargs="?", type=Path, help="a finished DDPM run directory")
    invert.add_argument("--pipeline", metavar="PATH", help="a DDPM-style pipeline folder instead of a run")
    invert.add_argument("--out", type=Path, help="output folder for a pipeline (default: inversion-<name>)")
    invert.add_argument("--steps", type=int, help="inversion steps (and as many back)")
    invert.add_argument("--start-step", type=int, help="edit: inverse steps to go back before sampling forward "
                        "(0 = the original itself)")
    invert.add_argument("--image", dest="images", type=int, action="append", metavar="INDEX",
                        help="dataset index to invert (repeatable)")
    invert.add_argument("--image-path", dest="image_paths", action="append", metavar="FILE",
                        help="a PNG/JPEG file to invert (repeatable)")
    invert.add_argument("--guidance-scale", type=float, help="class-conditional: CFG scale of the reconstruction")
    invert.add_argument("--edit-class", type=int, help="edit: sample forward as this class")
    invert.add_argument("--edit-guidance-scale", type=float, help="edit: CFG scale on the way forward")
    invert.add_argument("--sweep-steps", metavar="N,N,...", help="error per step count, e.g. 10,20,50,100")
    invert.add_argument("--sweep-guidance", metavar="G,G,...", help="error per guidance scale, e.g. 1,3,7")
    invert.add_argument("--device", choices=list(DEVICES), default="auto")

    model = commands.add_parser("model", help="dry-run a recipe's model: parameters, block shapes, FLOPs")
    model.add_argument("recipe", help="recipe file or built-in name")
    model.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    preview = commands.add_parser("preview", help="show an image (a sample grid, a GIF's first frame) here")
    preview.add_argument("image", type=Path)
    preview.add_argument("--width", type=int, default=64, help="columns (default 64)")

    audio_chapter = CHAPTERS[RECIPE_CHAPTERS["audio-spectrogram"]]
    audio = commands.add_parser("audio", help=f"the audio chapter ({audio_chapter.label}): what a mel spectrogram "
                                              "keeps of a sound")
    audio_commands = audio.add_subparsers(dest="audio_command", metavar="ACTION", required=True)
    roundtrip = audio_commands.add_parser(
        "roundtrip", help="send a recipe's clips through the spectrogram image and back, per mel setting")
    roundtrip.add_argument("recipe", nargs="?", default="audio-spectrogram",
                           help="recipe file or built-in name (default: audio-spectrogram)")
    roundtrip.add_argument("--n-mels", type=_int_list, help="mel bands to try, e.g. 16,32,64,128 "
                           "(default: the recipe's, half, double and four times)")
    roundtrip.add_argument("--hop-length", type=_int_list, help="hops to try, e.g. 128,256 (default: the recipe's)")
    roundtrip.add_argument("--n-fft", type=_int_list, help="STFT sizes to try, e.g. 512,1024 (default: the recipe's)")
    roundtrip.add_argument("--clips", type=int, default=20, help="clips to measure, spread over the dataset")
    roundtrip.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    export = commands.add_parser(
        "export", help="write a run's pipeline folder (RUN/pipeline) with its model card, ready to share",
        description="Write RUN/pipeline from the run's trained weights (its finished model, else its newest "
                    "checkpoint) in the form plain diffusers loads, with a Hub model card (README.md: the "
                    "recipe, the training figures, the evaluation, a sample grid, the code that loads it).")
    export.add_argument("run_dir", type=Path, help="a DDPM run directory")
    push = commands.add_parser(
        "push", help="upload a run's pipeline folder to the Hugging Face Hub",
        description="Upload RUN/pipeline (write it first with difflab export) to a Hub model repository, "
                    "created when missing. Needs a network and a token with write access (hf auth login, or "
                    "HF_TOKEN); without them it exits 2 and uploads nothing.")
    push.add_argument("run_dir", type=Path, help="a run directory with a pipeline folder")
    push.add_argument("repo_id", help="the Hub repository, owner/name")
    push.add_argument("--private", action="store_true", help="create the repository private")

    commands.add_parser("recipes", help="list the built-in recipes")
    return parser


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected whole numbers separated by commas, e.g. 16,32,64")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or (argv[0] not in COMMANDS and not argv[0].startswith("-")):
        return open_lab(argv[0] if argv else None)
    args = build_parser().parse_args(argv)
    handlers = {"run": cmd_run, "recipe": cmd_recipe, "recipes": cmd_recipes, "sample": cmd_sample,
                "eval": cmd_eval, "invert": cmd_invert, "model": cmd_model, "preview": cmd_preview, "audio": cmd_audio,
                "export": cmd_export, "push": cmd_push}
    try:
        return handlers[args.command](args)
    except DifflabError as error:
        print_error(str(error))
        return error.exit_code
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]")
        return 130
    except Exception as error:  # noqa: BLE001 (a bug: one line and a log file, never a bare traceback)
        report_internal_error(f"{type(error).__name__}: {error}", traceback.format_exc())
        return 1


COMMANDS = ("run", "recipe", "recipes", "sample", "eval", "invert", "model", "preview", "audio", "export", "push")


def open_lab(recipe: str | None) -> int:
    """`difflab [RECIPE]`: the lab in the terminal, on the given recipe or a fresh one."""
    # here, not at the top: keeps `difflab --help` fast (no torch, pydantic or TOML parser)
    from difflab.runtime.catalog import find_recipe

    try:
        path = find_recipe(recipe) if recipe else None
        if path is not None:
            from difflab.recipe import load_recipe

            load_recipe(path)  # a bad recipe is reported here, before the screen takes over
    except DifflabError as error:
        print_error(str(error))
        return error.exit_code
    # here, not at the top: keeps `difflab --help` fast (no torch, pydantic or TOML parser)
    from difflab.screens.app import DifflabApp

    DifflabApp(path).run()
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:


    # here, not at the top: keeps `difflab --help` fast (no torch, pydantic or TOML parser)
    from difflab.runtime.catalog import builtin_recipes

    table = Table("recipe", "what it does", title="built-in recipes (difflab run NAME)")
    for recipe in builtin_recipes():
        table.add_row(recipe.name, recipe.description)
    Console().print(table)
    return 0


def cmd_recipe(args: argparse.Namespace) -> int:
    # here, not at the top: keeps `difflab --help` fast (no torch, pydantic or TOML parser)
    from difflab.recipe import load_recipe, recipe_to_toml
    from difflab.runtime.catalog import find_recipe

    if args.recipe_command == "show":
        recipe = load_recipe(find_recipe(args.file), args.overrides, args.profile)
        if args.profile:  # the profile is laid over already: show what the run would keep, as RUN/recipe.toml does
            recipe = recipe.model_copy(update={"profiles": {}})
        print(recipe_to_toml(recipe), end="")
        return 0
    failed = False
    for name in args.files:
        try:
            load_recipe(find_recipe(name))
            print(f"ok    {name}")
        except (RecipeError, InputError) as error:
            failed = True
            print(f"error {error}", file=sys.stderr)
    return EXIT_BAD_INPUT if failed else 0


def cmd_run(args: argparse.Namespace) -> int:
    job, run, fresh = _prepare_training(args)
    try:
        if args.device:
            job.device = args.device  # the flag wins over the recipe, also when resuming
        quiet = int(os.environ.get("RANK", "0")) != 0  # one report per launch, from the main process
        outcome = run_job(job, job.device, Console(highlight=False, quiet=quiet))
        if fresh and outcome.exit_code == EXIT_BAD_INPUT and not run.list_checkpoints():
            shutil.rmtree(run.path, ignore_errors=True)  # nothing ran: leave no empty run behind
        return outcome.exit_code
    finally:
        run.release()  # the run folder is free for the next writer (the process may go on: tests, scripts)


def cmd_sample(args: argparse.Namespace) -> int:
    # here, not at the top: keeps `difflab --help` fast (no torch, pydantic or TOML parser)
    from difflab.jobs.sampling import SampleJob, SampleSource

    if bool(args.run_dir) == bool(args.pipeline):
        raise InputError("difflab sample: give either a run directory or --pipeline PATH_OR_HUB_ID")
    if args.sweep and args.grid:
        raise InputError("difflab sample: give --sweep or --grid, not both")
    num_images = args.num_images or (8 if args.grid else None)
    flags = {"sampler": args.sampler, "steps": args.steps, "eta": args.eta, "seed": args.seed,
             "num_images": num_images, "class_labels": args.class_labels, "guidance_scale": args.guidance_scale}
    overrides = [*args.overrides, *(f"sample.{k}={v!r}" if isinstance(v, str) else f"sample.{k}={v}"
                                    for k, v in flags.items() if v is not None)]
    if args.pipeline:
        out = args.out or Path("samples") / Path(args.pipeline).name
        source = SampleSource(pipeline=args.pipeline)
    else:
        out = args.out or args.run_dir / "samples"
        source = SampleSource(run_dir=args.run_dir)
    if args.sweep or args.grid:
        from difflab.jobs.sweep import Sweep, SweepJob, parse_sweep

        sweep = parse_sweep(args.sweep) if args.sweep else Sweep("class", ("all",))
        job = SweepJob(source, out, sweep, overrides, args.device)
    else:
        job = SampleJob(source, out, overrides, args.device)
    return run_job(job, args.device, Console(highlight=False)).exit_code


def cmd_eval(args: argparse.Namespace) -> int:
    # here, not at the top: keeps `difflab --help` fast (no torch, pydantic or TOML parser)
    from difflab.jobs.evaluation import EvalJob

    flags = {"sampler": args.sampler, "steps": args.steps}
    overrides = [*args.overrides, *(f"sample.{k}={v!r}" if isinstance(v, str) else f"sample.{k}={v}"
                                    for k, v in flags.items() if v is not None)]
    if args.samples is not None and args.samples < 2:
        raise InputError(f"--samples {args.samples}: must be at least 2 (a Fréchet distance needs a covariance)")
    sweep = _step_counts(args.sweep_steps) if args.sweep_steps else []
    if sweep and args.steps:
        raise InputError("--steps and --sweep-steps: give one of them")
    job = EvalJob(args.run_dir, overrides, args.samples, sweep, args.inception, args.device)
    return run_job(job, args.device, Console(highlight=False)).exit_code


def cmd_export(args: argparse.Namespace) -> int:
    """`difflab export RUN`: RUN/pipeline and its model card."""
    # here, not at the top: keeps `difflab --help` fast (no torch, pydantic or TOML parser)
    from difflab.jobs.after_training import export_run

    folder, weights = export_run(args.run_dir)
    Console(highlight=False, soft_wrap=True).print(f"{folder}: the diffusers pipeline of {weights}, with its "
                                                   f"model card (README.md)")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """`difflab push RUN REPO_ID`: RUN/pipeline uploaded to the Hub."""
    # here, not at the top: keeps `difflab --help` fast (no torch, pydantic or TOML parser)
    from difflab.jobs.sharing import push_run

    url = push_run(args.run_dir, args.repo_id, args.private)
    Console(highlight=False, soft_wrap=True).print(f"{args.run_dir}/pipeline uploaded: {url}")
    return 0


def cmd_invert(args: argparse.Namespace) -> int:
    # here, not at the top: keeps `difflab --help` fast (no torch, pydantic or TOML parser)
    from difflab.jobs.inversion import InvertJob
    from difflab.jobs.sampling import SampleSource
    from difflab.recipe import InvertConfig

    if bool(args.run_dir) == bool(args.pipeline):
        raise InputError("difflab invert: give either a run directory or --pipeline PATH")
    if args.pipeline:
        base, source = InvertConfig(), SampleSource(pipeline=args.pipeline)
        out = args.out or Path(f"inversion-{Path(args.pipeline).name}")
    else:
        from difflab.runtime.runs import RunDir

        base, source, out = RunDir.open(args.run_dir)[1].invert, SampleSource(run_dir=args.run_dir), args.run_dir
    flags = {"steps": args.steps, "start_step": args.start_step, "images": args.images,
             "image_paths": [str(Path(p).resolve()) for p in args.image_paths] if args.image_paths else None,
             "guidance_scale": args.guidance_scale, "edit_class": args.edit_class,
             "edit_guidance_scale": args.edit_guidance_scale,
             "sweep_steps": _step_counts(args.sweep_steps, "--sweep-steps") if args.sweep_steps else None,
             "sweep_guidance": _scales(args.sweep_guidance) if args.sweep_guidance else None}
    cfg = _invert_settings(base, {k: v for k, v in flags.items() if v is not None})
    job = InvertJob(cfg, source, out, device=args.device)
    return run_job(job, args.device, Console(highlight=False)).exit_code


def _invert_settings(base, changes: dict):
    """The [invert] settings with the command's flags laid over them, validated like a recipe's."""
    # here, not at the top: keeps `difflab --help` fast (no torch, pydantic or TOML parser)
    from pydantic import ValidationError

    from difflab.recipe import InvertConfig, describe_error

    data = {**base.model_dump(), **changes, "enabled": True}
    if data["start_step"] > data["steps"] and "start_step" not in changes:
        data["start_step"] = -1  # the recipe's start step was for its own step count
    try:
        return InvertConfig.model_validate(data)
    except ValidationError as error:
        lines = [describe_error({**e, "loc": ("invert", *e["loc"])}, {"invert": data}) for e in error.errors()]
        raise RecipeError("difflab invert", lines) from None


def _scales(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--sweep-guidance {text}: expected numbers separated by commas, e.g. 1,3,7") from None


def _step_counts(text: str, flag: str = "--sweep-steps") -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or any(c <= 0 for c in counts):
        raise InputError(f"{flag} {text}: expected positive step counts separated by commas, e.g. 10,20,50")
    return counts


def cmd_preview(args: argparse.Namespace) -> int:
    # here, not at the top: keeps `difflab --help` fast (no torch, pydantic or TOML parser)
    from PIL import Image, UnidentifiedImageError

    from difflab.diffusion.render import terminal_image

    try:
        with Image.open(args.image) as image:
            image.load()
            picture = image.copy()
    except FileNotFoundError:
        raise InputError(f"{args.image}: no such file") from None
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"{args.image}: not an image this lab can read ({error})") from None
    print(terminal_image(picture, width=args.width))
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    """`difflab model`: the recipe's network dry-run, and where each of its settings comes from."""
    # here, not at the top: keeps `difflab --help` fast (no torch, pydantic or TOML parser)
    from difflab.diffusion.models import dry_run
    from difflab.diffusion.sources import provenance, resolve
    from difflab.recipe import load_recipe
    from difflab.runtime.catalog import find_recipe

    path = find_recipe(args.recipe)
    resolution = resolve(load_recipe(path, args.overrides), path.parent)
    report = dry_run(resolution.recipe, base_dir=path.parent)
    console = Console()
    console.print(f"[bold]{report.kind}[/]: {report.parameters:,} parameters; one forward pass of one "
                  f"{report.input_shape} image: {report.flops_per_image / 1e9:.3f} GFLOPs")
    table = Table("block", "output shape (C, H, W)")
    for name, shape in report.blocks:
        table.add_row(name, str(shape))
    console.print(table)
    wide = Console(width=max(shutil.get_terminal_size().columns, 100), highlight=False)
    origins = Table("setting", "value", "from", title="where each setting comes from")
    for key, value, origin in provenance(resolution):
        origins.add_row(key, str(value), origin, style="dim" if origin == "default" else None)
    wide.print(origins)
    if resolution.source is not None:
        wide.print(f"'source' is train.init_from = {resolution.source.where}", soft_wrap=True)
    return 0


def cmd_audio(args: argparse.Namespace) -> int:
    """`difflab audio roundtrip`: spectral convergence and log-spectral distance per mel setting."""
    # here, not at the top: keeps `difflab --help` fast (no torch, pydantic or TOML parser)
    from difflab.diffusion.sounds import measure_settings
    from difflab.recipe import load_recipe
    from difflab.runtime.catalog import find_recipe

    path = find_recipe(args.recipe)
    recipe = load_recipe(path, args.overrides)
    cfg, size = recipe.audio, recipe.dataset.image_size
    mels = args.n_mels or sorted({max(4, cfg.n_mels // 2), cfg.n_mels, cfg.n_mels * 2, cfg.n_mels * 4})
    report = measure_settings(recipe, path.parent, args.n_fft or [cfg.n_fft], args.hop_length or [cfg.hop_length],
                              mels, args.clips)
    table = Table("n_fft", "hop", "n_mels", "spectrogram → image", "spectral convergence", "log-spectral dist. (dB)",
                  title=f"round trip sound → {size}×{size} image → sound: {report.clips} clips of {report.source}, "
                        f"{cfg.sample_rate} Hz, {cfg.clip_seconds:g} s, Griffin-Lim {cfg.griffin_lim_iters} iterations")
    for row in report.rows:
        setting = [str(row.setting[k]) for k in ("n_fft", "hop_length", "n_mels")]
        if row.error is None:
            table.add_row(*setting, f"[red]{row.problem}[/]", "", "")
            continue
        bands, frames = row.spectrogram
        fit = f"{bands}×{frames}" + ("" if (bands, frames) == (size, size) else f" → {size}×{size}")
        table.add_row(*setting, fit, f"{row.error.spectral_convergence:.3f}", f"{row.error.log_spectral_distance:.2f}")
    floor = report.griffin_lim_only
    table.add_row(str(cfg.n_fft), str(cfg.hop_length), "—", "full STFT, no image", f"{floor.spectral_convergence:.3f}",
                  f"{floor.log_spectral_distance:.2f}", style="dim")
    Console(width=max(shutil.get_terminal_size().columns, 100)).print(table)
    return 0


def _prepare_training(args: argparse.Namespace):
    # here, not at the top: keeps `difflab --help` fast (no torch, pydantic or TOML parser)
    from difflab.diffusion.folders import recorded_data_path
    from difflab.diffusion.sources import resolve
    from difflab.jobs.training import TrainingJob
    from difflab.recipe import load_recipe
    from difflab.runtime.catalog import find_recipe
    from difflab.runtime.runs import RunDir, default_run_dir

    if args.resume:
        if args.recipe or args.overrides or args.out or args.profile:
            raise InputError("--resume RUN_DIR continues a run with the recipe saved in it; "
                             "give no recipe, --set, --profile or --out with it")
        main_process = int(os.environ.get("RANK", "0")) == 0
        run, recipe = RunDir.resume(args.resume) if main_process else RunDir.open(args.resume)
        if run.list_checkpoints():
            return TrainingJob(recipe, run, run.path, resume=True), run, False
        # Stopped before its first checkpoint (killed, or a crash): the one way on is to start again.
        if main_process:
            run.restart()
            Console(highlight=False, soft_wrap=True).print(f"{run.path}: no checkpoint yet, so the run starts again from step 0 "
                                           f"with its saved recipe")
        return TrainingJob(recipe, run, run.path), run, False
    if not args.recipe:
        raise InputError("difflab run: give a recipe file or built-in name (see `difflab recipes`), "
                         "or --resume RUN_DIR")
    path = find_recipe(args.recipe)
    device = [f"device={args.device!r}"] if args.device else []
    recipe = load_recipe(path, [*args.overrides, *device], args.profile)
    if recipe.dataset.path and not Path(recipe.dataset.path).expanduser().is_absolute():
        # The run's recipe.toml must replay from anywhere, so paths are written out absolute.
        recipe.dataset.path = recorded_data_path(recipe.dataset, path.parent)
    if recipe.train.init_from:
        recipe.train.init_from = _init_source(recipe.train.init_from, path)
        recipe = resolve(recipe, path.parent).recipe  # the source's network and schedule, as recipe.toml says
    out = args.out or default_run_dir(path)
    if recipe.invert.enabled and recipe.invert.source:
        return _inversion_run(recipe, path, out)
    # Under `accelerate launch` only the main process creates and writes the run directory.
    run = RunDir.create(out, recipe) if int(os.environ.get("RANK", "0")) == 0 else RunDir(out)
    return TrainingJob(recipe, run, path.parent), run, True


def _inversion_run(recipe, path: Path, out: Path):
    """`difflab run` of a recipe whose invert.source names the model: invert it instead of training."""
    # here, not at the top: keeps `difflab --help` fast (no torch, pydantic or TOML parser)
    from difflab.jobs.inversion import InvertJob
    from difflab.jobs.sampling import SampleSource
    from difflab.runtime.runs import RunDir

    folder = Path(_init_source(recipe.invert.source, path)).expanduser()
    if not folder.is_dir():
        raise InputError(f"invert.source = {recipe.invert.source!r}: no such folder ({folder})")
    recipe.invert.source = str(folder)
    source = SampleSource.of_folder(folder)  # the inversion screen's rule too
    run = RunDir.create(out, recipe)
    job = InvertJob(recipe.invert, source, out, recipe, path.parent, recipe.device, run)
    return job, run, True


def _init_source(source: str, recipe_path: Path) -> str:
    """train.init_from made absolute when it names a local folder, so the run replays from anywhere.

    Relative to the recipe's folder, or to the current folder for a built-in recipe (whose
    folder is inside the installed package, where no run lives). A hub id stays as it is.
    """
    # here, not at the top: keeps `difflab --help` fast (no torch, pydantic or TOML parser)
    from difflab.runtime.catalog import is_builtin

    if Path(source).expanduser().is_absolute():
        return source
    base = Path.cwd() if is_builtin(recipe_path) else recipe_path.parent
    local = (base / Path(source).expanduser()).resolve()
    return str(local) if local.exists() else source


if __name__ == "__main__":
    sys.exit(main())
