"""The headless runner: replays a recipe on the worker and reports its events with Rich.

In a terminal it shows a live progress bar and, at the end, the final sample grid
as a terminal image; in CI (not a terminal) it prints a plain line at each tenth
of the run. Ctrl-C asks the job to stop, which writes a checkpoint first.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from difflab.jobs.devices import resolve_device
from difflab.runtime import events
from difflab.runtime.crashes import internal_error_line, write_crash_log
from difflab.runtime.worker import Worker

EXIT_INTERRUPTED = 130  # the shell convention for "stopped by Ctrl-C"


@dataclass
class RunOutcome:
    """How a headless run ended, and the exit code that says so."""

    exit_code: int
    status: str
    summary: dict


class Reporter:
    """Turns events into terminal output."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not self.live)
        self.task = None
        self.next_plain_step = 0
        self.final_image = None
        self.figures: list[events.PreviewReady] = []  # titled figures beside the final grid (a VAE's latents)
        self.run_dir = None
        self.last_checkpoint = None

    def __enter__(self) -> Self:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def handle(self, event: events.Event) -> None:
        match event:
            case events.JobStarted():
                self.run_dir = event.run_dir
                self.console.print(f"[bold]{event.name}[/] on [cyan]{event.device}[/] → {event.run_dir}")
                if event.parameters:
                    self.console.print(f"[dim]{event.trainable_parameters:,} trainable of {event.parameters:,} "
                                       f"parameters[/]")
                self.task = self.progress.add_task(event.name, total=event.total_steps,
                                                   completed=event.start_step, loss="–", rate="")
                self.plain_every = max(1, event.total_steps // 10)
                self.next_plain_step = event.start_step + self.plain_every
            case events.Progress():
                self.progress.update(self.task, completed=event.step, loss=_fmt(event.loss))
            case events.StepLogged():
                parts = "".join(f" {name} {value:.5g}" for name, value in event.parts.items())
                self.progress.update(self.task, rate=f"{parts.strip()} {event.images_per_sec:,.0f} img/s".strip())
                if not self.live and event.step >= self.next_plain_step:
                    self.next_plain_step = event.step + self.plain_every
                    self.console.print(f"step {event.step} epoch {event.epoch} loss {event.loss:.5f}{parts} "
                                       f"{event.images_per_sec:,.0f} img/s")
            case events.EpochFinished():
                self.console.print(f"epoch {event.epoch}: average loss {event.loss:.5f}")
            case events.PreviewReady() if event.title:
                self.figures.append(event)
            case events.PreviewReady():
                self.final_image = event.image
            case events.CheckpointSaved():
                if not self.live and event.path != self.last_checkpoint:  # a stop right after one asks again
                    self.console.print(f"checkpoint {event.path}")
                self.last_checkpoint = event.path
            case events.LogLine():
                style = {"warning": "yellow", "error": "red"}.get(event.level, "dim")
                self.console.print(f"[{style}]{escape(event.text)}[/]")

    def show_final(self, summary: dict) -> None:
        table = Table(title="run summary", show_header=False)
        for key in ("status", "run_dir", "device", "dataset", "parameters", "steps", "final_loss",
                    "epoch_losses", "elapsed_s"):
            if summary.get(key) is not None:
                table.add_row(key, _fmt(summary[key]))
        self.console.print(table)
        if self.live and self.final_image is not None and summary.get("status") == "finished":
            from difflab.diffusion.render import terminal_image  # keeps torch off `difflab --help`

            self.console.print(f"final samples ({summary.get('samples')}):")
            print(terminal_image(self.final_image, width=min(64, self.console.width)))
            for figure in self.figures:
                self.console.print(f"{figure.title} ({figure.path}):")
                print(terminal_image(figure.image, width=min(64, self.console.width)))


def run_job(job, device: str, console: Console) -> RunOutcome:
    """Run one job on a fresh worker, reporting its events; Ctrl-C stops it with a checkpoint."""
    worker = Worker(device, resolve_device=resolve_device)
    handle = worker.submit(job)
    with _stop_on_ctrl_c(handle.control, console), Reporter(console) as reporter:
        for event in worker.iter_events(handle.job_id):
            reporter.handle(event)
    worker.shutdown()
    if isinstance(event, events.JobError):
        if not event.traceback:
            print_error(event.message)
        elif _disk_full(event.message):
            print_error(f"disk full: {event.message}. Free some space, keep fewer checkpoints "
                        f"(train.keep_checkpoints), or write the run on another disk (--out)")
        else:
            folder = getattr(job, "run_dir", None)  # a RunDir (training) or a folder (eval)
            report_internal_error(event.message, event.traceback, reporter.run_dir or getattr(folder, "path", folder))
        return RunOutcome(event.exit_code, "error", {})
    reporter.show_final(event.summary)
    if event.status == "stopped":
        console.print(f"stopped; continue with: difflab run --resume {event.summary.get('run_dir')}")
        return RunOutcome(EXIT_INTERRUPTED, "stopped", event.summary)
    show_quality(console, event.summary)
    show_vae(console, event.summary)
    show_inversion(console, event.summary)
    if not show_expectations(console, event.summary.get("expectations", [])):
        return RunOutcome(1, "expectations failed", event.summary)
    return RunOutcome(0, event.status, event.summary)


def show_quality(console: Console, summary: dict) -> None:
    """The quality numbers of a run (`eval`) or of a step sweep (`eval_sweep`), one row per setting."""
    tables = [("sample quality", [summary["eval"]])] if summary.get("eval") else []
    tables += [(f"{sampler}: quality per step count", rows) for sampler, rows in summary.get("eval_sweep", {}).items()]
    for title, rows in tables:
        table = Table("sampler", "steps", "FD norm.", "FD", "FD real", "FD noise", "confidence", "classes (bits)",
                      title=title)
        for row in rows:
            table.add_row(row["sampler"], str(row["steps"]), f"{row['frechet_normalised']:.3f}",
                          f"{row['frechet']:.1f}", f"{row['frechet_real']:.1f}", f"{row['frechet_noise']:.1f}",
                          f"{row['confidence']:.3f}", f"{row['class_entropy_bits']:.2f} of {row['class_entropy_max_bits']:.2f}")
        console.print(table)
        last = rows[-1]
        if last.get("class_accuracy") is not None:
            console.print(f"class accuracy: {last['class_accuracy']:.1%} of the samples show the class they "
                          f"were asked for (chance {1 / 2 ** last['class_entropy_max_bits']:.0%})")
        console.print(f"{last['samples']} samples per row against {last['held_out_samples']} held-out real images "
                      f"(classifier {last['classifier_accuracy']:.1%} right on them). FD norm. = (FD - FD real) / "
                      f"(FD noise - FD real): 0 = as close as unseen real images, 1 = as far as noise")
        for warning in last.get("warnings", []):
            console.print(f"[yellow]warning: {escape(warning)}[/]")
    if summary.get("eval_skipped"):
        console.print(f"[yellow]sample quality not measured: {escape(summary['eval_skipped'])}[/]")
    fid = summary.get("inception_fid")
    if fid:
        console.print(escape(f"Inception FID: {fid['value']:.2f} ({fid['note']})" if fid["value"] is not None
                             else f"Inception FID {fid['note']}"))


def show_vae(console: Console, summary: dict) -> None:
    """A VAE run's report: compression, held-out reconstruction error, latent statistics, scaling factor."""
    vae = summary.get("vae")
    if not vae:
        return
    image, latent = vae["image_shape"], vae["latent_shape"]
    table = Table("figure", "value", title=f"VAE → {vae['folder']}")
    table.add_row("compression", f"{_shape(image)} = {math.prod(image):,} numbers → {_shape(latent)} = "
                                 f"{math.prod(latent):,} latent numbers: {vae['compression_factor']:.3g}× fewer")
    table.add_row("held-out reconstructions", f"{vae['held_out_images']} images never trained on: MSE "
                                              f"{vae['mse']:.5f}, PSNR {vae['psnr_db']:.2f} dB (0..1 pixels)")
    table.add_row("training images", f"PSNR {vae['train_psnr_db']:.2f} dB on as many of its "
                                     f"{vae['train_images']} training images")
    table.add_row("latent mean per channel", _numbers(vae["latent_mean"]))
    table.add_row("latent std per channel", _numbers(vae["latent_std"]))
    table.add_row("scaling factor", f"{vae['scaling_factor']:.4g} = 1 / {vae['latent_std_all']:.4g}, the std of "
                                    f"all latent values (SD's VAE: 0.18215); in its config.json")
    console.print(table)
    console.print(f"originals | reconstructions: {vae['reconstructions_figure']}; latent channels: "
                  f"{vae['latents_figure']}")


def show_inversion(console: Console, summary: dict) -> None:
    """The DDIM inversion's error table: the run's setting, random noise for scale, and the sweeps."""
    from difflab.jobs.inversion import inversion_table_rows  # keeps torch off `difflab --help`

    inv = summary.get("invert")
    if not inv:
        return
    table = Table("setting", "steps", "guidance", "MSE (0..1 pixels)", "PSNR (dB)",
                  title=f"DDIM inversion of {inv['images']} images → {inv['folder']}")
    for row in inversion_table_rows(inv):
        table.add_row(*row, style="dim" if row[0] == "random noise instead" else None)
    console.print(table)


def show_expectations(console: Console, records: list[dict]) -> bool:
    """One pass/fail line per `[expect]` line; True when all hold."""
    from difflab.jobs.expectations import ExpectationResult  # keeps pydantic off `difflab --help`

    results = [ExpectationResult(**record) for record in records]
    for result in results:
        console.print(f"[{'green' if result.passed else 'red'}]{escape(result.line())}[/]")
    return all(r.passed for r in results)


def print_error(message: str, details: str = "") -> None:
    """One red `error:` line on stderr, never wrapped (it names file, key and value), then any details."""
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    errors.print(f"[red]error:[/] {escape(message)}")
    if details:
        errors.print(f"[dim]{escape(details)}[/]")


def report_internal_error(summary: str, details: str, folder: Path | None = None) -> Path | None:
    """A bug, not the user's input: one `internal error:` line naming a log file that holds the traceback
    (runtime/crashes.py); where no log can be written, the traceback is printed rather than lost."""
    path = write_crash_log(details, folder)
    print_error(internal_error_line(summary, path), "" if path else details)
    return path


def _disk_full(message: str) -> bool:
    return "[Errno 28]" in message or "No space left on device" in message


@contextlib.contextmanager
def _stop_on_ctrl_c(control, console: Console):
    """First Ctrl-C: ask the job to stop (it checkpoints first). Second: leave at once.

    A handler rather than catching KeyboardInterrupt, which could land anywhere in
    the reporting code; leaving at once is safe because checkpoints are atomic.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    presses = 0

    def on_sigint(signum, frame):
        nonlocal presses
        presses += 1
        if presses == 1:
            control.stop()
            console.print("[yellow]stopping: writing a checkpoint (Ctrl-C again to abandon it)…[/]")
        else:
            console.print("[red]abandoned; the last complete checkpoint is kept[/]")
            os._exit(EXIT_INTERRUPTED)  # the worker thread may be inside torch: don't wait for it

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _shape(shape: list[int]) -> str:
    return "×".join(map(str, shape))


def _numbers(values: list[float]) -> str:
    return ", ".join(f"{v:.3g}" for v in values)


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.5f}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)
