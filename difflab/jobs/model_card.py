"""The model card of a run's exported pipeline, RUN/pipeline/README.md, in the Hub's format:
YAML metadata (huggingface_hub's ModelCardData) over a body with the samples, the code that
loads and samples the pipeline, the training figures, the evaluation and the recipe.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from difflab.files import atomic_write_text
from difflab.recipe import Recipe
from difflab.runtime.runs import RunDir

LICENSE = "apache-2.0"  # difflab's own; whoever shares the weights may choose another
SAMPLES = "samples.png"  # the run's final grid, copied beside the card
EVAL_COLUMNS = {"sampler": "sampler", "steps": "steps", "samples": "samples",
                "frechet_normalised": "Fréchet distance, normalised (0 real, 1 noise)",
                "confidence": "classifier confidence", "class_accuracy": "class accuracy",
                "class_entropy_bits": "class entropy (bits)"}


def write_model_card(run: RunDir, recipe: Recipe, source: str) -> Path:
    """RUN/pipeline/README.md (and the samples it shows); `source` is what the code loads: a path or hub id."""
    conditional = bool(recipe.model.num_classes)
    tags = ["pytorch", "diffusers", "class-conditional" if conditional else "unconditional-image-generation",
            *(["latent-diffusion"] if recipe.latent.vae else []), "difflab"]
    data = ModelCardData(library_name="diffusers", license=LICENSE, tags=tags,
                         pipeline_tag=None if conditional else "unconditional-image-generation",
                         datasets=[recipe.dataset.path] if recipe.dataset.source == "hub" else None)
    body = "\n\n".join(part for part in (
        _heading(run, recipe, _copy_samples(run)), _code(recipe, source), _classes(run.read_summary(), recipe),
        _training(run), _evaluation(run.read_summary()), _recipe(run)) if part)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")
    path = run.pipeline_dir / "README.md"
    atomic_write_text(path, str(card))
    return path


def _copy_samples(run: RunDir) -> bool:
    """The run's final grid (else its newest preview) beside the card; False when it has none."""
    grids = [run.samples / "final.png"] if (run.samples / "final.png").is_file() else []
    grids = grids or sorted(run.samples.glob("step_*.png"))[-1:]
    if grids:
        shutil.copyfile(grids[0], run.pipeline_dir / SAMPLES)
    return bool(grids)


def _heading(run: RunDir, recipe: Recipe, samples: bool) -> str:
    d, kind = recipe.dataset, "A class-conditional" if recipe.model.num_classes else "An unconditional"
    about = (f"{kind} DDPM ({recipe.model.kind}, schedule {recipe.schedule.beta_schedule}, objective "
             f"{recipe.train.objective}) on {d.source} images, {d.image_size}×{d.image_size} px, {d.channels} "
             f"channel{'s' if d.channels > 1 else ''}, trained with difflab, a terminal lab for learning "
             f"diffusion models step by step.{_latent(run, recipe)}")
    picture = f"\n\n![samples from the trained model]({SAMPLES})" if samples else ""
    return f"# {run.path.name}\n\n{about}{picture}"


def _latent(run: RunDir, recipe: Recipe) -> str:
    """What a latent model's pipeline adds: the VAE its UNet diffuses in, and the scaling factor."""
    if not recipe.latent.vae:
        return ""
    # the run's own copy of the VAE (an exported latent run always has one), with the factor training used
    vae = json.loads((run.vae_dir / "config.json").read_text(encoding="utf-8"))
    size = recipe.dataset.image_size // 2 ** (len(vae["block_out_channels"]) - 1)
    folder = "vae/" if recipe.model.num_classes else "vqvae/, LDMPipeline's name for it"
    return (f"\n\nIt is a **latent diffusion model**, Stable Diffusion's first half: its UNet denoises "
            f"{vae['latent_channels']}×{size}×{size} latents of an AutoencoderKL ({folder}), scaled to unit "
            f"variance by the VAE's scaling_factor {vae['scaling_factor']:.4g}, and the pipeline decodes them "
            f"to images.")


def _code(recipe: Recipe, source: str) -> str:
    """The plain-diffusers code that loads and samples the pipeline (no difflab needed)."""
    seeded = "num_inference_steps=50,\n              generator=torch.Generator().manual_seed(0)).images"
    if recipe.model.num_classes:
        labels = list(range(min(recipe.model.num_classes, 3)))
        scale = float(recipe.sample.guidance_scale)
        head = ("The pipeline's class is in `pipeline.py` beside the weights (torch and diffusers only), "
                "so diffusers asks for `trust_remote_code=True`:")
        names, load = "DDIMScheduler, DiffusionPipeline", f'DiffusionPipeline.from_pretrained("{source}", trust_remote_code=True)'
        call = f"pipe(class_labels={labels}, guidance_scale={scale!r}, {seeded}"
    elif recipe.latent.vae:
        head = ("A plain `LDMPipeline` (diffusers warns that it expected a VQModel as `vqvae`: the pipeline "
                "only decodes with it, which an AutoencoderKL does the same way):")
        names, load = "DDIMScheduler, LDMPipeline", f'LDMPipeline.from_pretrained("{source}")'
        call = f"pipe(batch_size=4, {seeded}"
    else:
        head, names, load = "A plain `DDPMPipeline`:", "DDIMScheduler, DDPMPipeline", f'DDPMPipeline.from_pretrained("{source}")'
        call = f"pipe(batch_size=4, {seeded}"
    code = "\n".join([
        "import torch", f"from diffusers import {names}", "", f"pipe = {load}",
        "pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # 50 steps instead of 1000",
        f"images = {call}", 'images[0].save("sample.png")'])
    note = ("" if recipe.dataset.value_range == "-1..1" else
            f"\n\nThe model was trained on pixels in {recipe.dataset.value_range}, while diffusers' pipelines "
            "read the model's output as -1..1: with `output_type=\"np\"`, `images * 2 - 1` gives its pixels.")
    return f"## Use it\n\n{head}\n\n```python\n{code}\n```{note}"


def _classes(summary: dict, recipe: Recipe) -> str:
    """Each class label's name, as the dataset called it (summary.json), else its number."""
    count = recipe.model.num_classes
    if not count:
        return ""
    names = (summary.get("class_names") or [])[:count]
    rows = "\n".join(f"| {i} | {names[i] if i < len(names) else i} |" for i in range(count))
    return (f"## Classes\n\n`class_labels` takes these indices; `guidance_scale` 0 ignores the class, 1 is the "
            f"class alone, above 1 follows it harder (classifier-free guidance).\n\n| label | class |\n|---|---|\n"
            f"{rows}")


def _training(run: RunDir) -> str:
    """Steps and loss from summary.json, else from metrics.jsonl's last line (an unfinished run); the time
    from that line, which counts training alone (summary.json's also counts the sampling and evaluation after)."""
    summary, metrics = run.read_summary(), run.read_metrics()
    last = metrics[-1] if metrics else {}
    figures = {"status": summary.get("status", "unfinished"),
               "optimizer steps": summary.get("steps", last.get("step")),
               "epochs": summary.get("epochs_completed"),
               "final loss": _number(summary.get("final_loss", last.get("loss"))),
               "loss drop (first / last logged)": _number(summary.get("loss_drop_factor")),
               "training time": _duration(last.get("elapsed", summary.get("elapsed_s"))),
               "dataset": f"{summary['dataset']} ({summary['dataset_size']} images)" if "dataset" in summary else None,
               "parameters": f"{summary['parameters']:,}" if "parameters" in summary else None,
               "device": summary.get("device"), "finished": summary.get("finished_at"),
               "versions": ", ".join(f"{k} {v}" for k, v in summary.get("versions", {}).items()) or None}
    rows = "\n".join(f"| {name} | {value} |" for name, value in figures.items() if value is not None)
    return f"## Training\n\n| | |\n|---|---|\n{rows}"


def _evaluation(summary: dict) -> str:
    """The run's evaluation against difflab's reference classifier (`difflab eval`), when it has one."""
    rows = [summary["eval"]] if isinstance(summary.get("eval"), dict) else []
    rows += [row for table in summary.get("eval_sweep", {}).values() for row in table]
    if not rows:
        return ""
    columns = [key for key in EVAL_COLUMNS if any(row.get(key) is not None for row in rows)]
    lines = ["| " + " | ".join(EVAL_COLUMNS[key] for key in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_number(row.get(key)) or "" for key in columns) + " |" for row in rows]
    return ("## Evaluation\n\nSamples measured against a reference classifier difflab trains on the dataset "
            "(its features stand in for Inception's, offline).\n\n" + "\n".join(lines))


def _recipe(run: RunDir) -> str:
    return ("## Recipe\n\nThe run's whole recipe; `difflab run recipe.toml` trains it again.\n\n"
            f"```toml\n{run.recipe_path.read_text(encoding='utf-8').strip()}\n```")


def _number(value) -> str | None:
    if value is None:
        return None
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"
