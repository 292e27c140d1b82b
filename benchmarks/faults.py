r"""Fault harness: kill a tiny `difflab run` at random moments, recover it, and compare it
with an uninterrupted run; then a read-only --out, a full disk and corrupt files.

Each trial starts the TINY run of tests/conftest.py (`difflab run from-scratch --out RUN
--set …` in a subprocess) and interrupts it once, sometimes twice (the second time while
it resumes): SIGKILL, one SIGINT (stop with a checkpoint) or two (abandon), either after a
random delay or at a file event: the n-th metrics line, a preview PNG, a checkpoint folder
appearing, or a checkpoint or model write in flight (its `.NAME.<random>.tmp`). Then it
recovers the run the way a person would, with one command: `difflab run --resume RUN`, or
the original command again when the kill came before the run folder held its recipe. The
recovered run must match the reference: final weights (checkpoints/step_000012), the
losses in metrics.jsonl, and samples/final.png, byte for byte.

Prints `N tried, N identical, N tracebacks, N data lost`: a traceback is any "Traceback"
in any output; data lost is a run that could not be recovered or ended different.

The other faults (each must end in one clear line, no traceback, and recover): a read-only
--out and a read-only run to resume (a read-only tmpfs / bind mount), a full disk (a small
tmpfs; then more room and --resume, which must end identical), corrupt files (a truncated
checkpoint, garbage in recipe.toml, state.json, the last metrics line and the lock file).
The mounts need `unshare -m` (root, or unprivileged user namespaces with -r); without it
the full disk falls back to a file size limit (RLIMIT_FSIZE), which is not the same fault,
and the read-only cases are skipped: the report says so.

Run: python benchmarks/faults.py [--trials 10] [--seed 0] [--keep DIR]
About 35 runs of the tiny recipe for 10 trials: 21 minutes measured on the 2-core box under a
load of 6-8 (a run took 36 s there, ~8 s on an idle box). Figures to quote, not a test (not in CI).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import TINY  # noqa: E402  (the one tiny recipe, as the tests run it)

TOTAL_STEPS = 12  # TINY: 64 images, batch 16, 3 epochs
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
TMP_ENTRY = re.compile(r"^\.(step_\d+|model)\..+\.tmp$")


def difflab(*args: str) -> list[str]:
    return [sys.executable, "-m", "difflab", *map(str, args)]


def run_command(out: Path) -> list[str]:
    sets = [arg for item in TINY for arg in ("--set", item)]
    return difflab("run", "from-scratch", "--out", out, *sets)


# ------------------------------------------------------------------ what a run ends with


@dataclass
class Result:
    weights: dict | None
    losses: list | None
    grid: bytes | None

    @classmethod
    def of(cls, run: Path) -> Result:
        from safetensors.torch import load_file

        final = run / "checkpoints" / f"step_{TOTAL_STEPS:06d}" / "model.safetensors"
        metrics, grid = run / "metrics.jsonl", run / "samples" / "final.png"
        return cls(load_file(final) if final.exists() else None,
                   [(row["step"], row["loss"]) for row in map(json.loads, metrics.read_text().splitlines())]
                   if metrics.exists() else None,
                   grid.read_bytes() if grid.exists() else None)

    def same_as(self, other: Result) -> bool:
        import torch

        if self.weights is None or other.weights is None or self.weights.keys() != other.weights.keys():
            return False
        return (all(torch.equal(self.weights[k], other.weights[k]) for k in self.weights)
                and self.losses == other.losses and self.grid == other.grid)


@dataclass
class Outcome:
    """What one process did: exit code and everything it printed."""

    rc: int
    output: str

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.output


def finish(cmd: list[str], log: list[Outcome], timeout: float = 300) -> Outcome:
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout, cwd=REPO, check=False)
    outcome = Outcome(done.returncode, done.stdout + done.stderr)
    log.append(outcome)
    return outcome


# ------------------------------------------------------------------ interruptions


@dataclass
class Interruption:
    how: str      # "SIGKILL", "SIGINT", "SIGINT x2"
    when: str     # "after 3.2 s", "metrics line 3", "checkpoint write", ...
    caught: bool = False


def pick_interruption(rng: random.Random, lifetime: float) -> tuple[Interruption, object]:
    how = rng.choice(["SIGKILL", "SIGKILL", "SIGINT", "SIGINT x2"])
    kind = rng.choice(["time", "time", "metrics", "preview", "checkpoint", "write"])
    if kind == "time":
        delay = rng.uniform(0.2, lifetime)
        return Interruption(how, f"after {delay:.1f} s"), lambda run, start: time.monotonic() - start >= delay
    if kind == "metrics":
        lines = rng.randint(1, TOTAL_STEPS // 2)
        return Interruption(how, f"metrics line {lines}"), lambda run, start: _lines(run / "metrics.jsonl") >= lines
    if kind == "preview":
        step = rng.choice([4, 8])
        png = f"step_{step:06d}.png"
        return Interruption(how, f"preview {png}"), lambda run, start: (run / "samples" / png).exists()
    if kind == "checkpoint":
        step = rng.choice([4, 8, 12])
        folder = f"step_{step:06d}"
        return Interruption(how, f"checkpoint {folder} appears"), lambda run, start: (run / "checkpoints" / folder).exists()
    return Interruption(how, "a checkpoint or model write in flight"), lambda run, start: _writing(run)


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def _writing(run: Path) -> bool:
    for folder in (run / "checkpoints", run):
        try:
            if any(TMP_ENTRY.match(entry.name) for entry in os.scandir(folder)):
                return True
        except OSError:
            pass
    return False


def interrupted(cmd: list[str], run: Path, interruption: Interruption, trigger, log: list[Outcome]) -> Outcome:
    """Start `cmd`, interrupt it when `trigger` fires (polled every millisecond), let it end."""
    with tempfile.TemporaryFile("w+") as output:
        proc = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, env=ENV, cwd=REPO, text=True)
        start = time.monotonic()
        while proc.poll() is None:
            if trigger(run, start):
                interruption.caught = True
                if interruption.how == "SIGKILL":
                    proc.send_signal(signal.SIGKILL)
                else:
                    proc.send_signal(signal.SIGINT)
                    if interruption.how == "SIGINT x2":
                        time.sleep(0.05)
                        proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.001)
        proc.wait(timeout=300)
        output.seek(0)
        outcome = Outcome(proc.returncode, output.read())
    log.append(outcome)
    return outcome


def recover(run: Path, log: list[Outcome]) -> Outcome:
    """The one command a person would type: --resume, or the same run again when no recipe was saved."""
    if (run / "recipe.toml").exists():
        return finish(difflab("run", "--resume", run), log)
    return finish(run_command(run), log)


# ------------------------------------------------------------------ the trials


@dataclass
class Trial:
    interruptions: list[Interruption] = field(default_factory=list)
    outputs: list[Outcome] = field(default_factory=list)
    identical: bool = False
    lost: bool = False

    @property
    def tracebacks(self) -> bool:
        return any(o.traceback for o in self.outputs)

    def line(self, n: int) -> str:
        what = "; then ".join(f"{i.how} at {i.when}" + ("" if i.caught else " (ended first)")
                              for i in self.interruptions)
        verdict = "identical" if self.identical else "DATA LOST"
        codes = ",".join(str(o.rc) for o in self.outputs)
        return f"{n:3d}. {what}: exit codes {codes} → {verdict}{', TRACEBACK' if self.tracebacks else ''}"


def trial(work: Path, reference: Result, rng: random.Random, lifetime: float) -> Trial:
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    result = Trial()
    interruption, trigger = pick_interruption(rng, lifetime)
    result.interruptions.append(interruption)
    interrupted(run_command(run), run, interruption, trigger, result.outputs)
    if rng.random() < 0.3 and (run / "recipe.toml").exists():  # and once more while it resumes
        interruption, trigger = pick_interruption(rng, lifetime)
        result.interruptions.append(interruption)
        interrupted(difflab("run", "--resume", run), run, interruption, trigger, result.outputs)
    for _ in range(2):  # an interruption can land after the job ended: then one --resume finds it finished
        outcome = recover(run, result.outputs)
        if outcome.rc == 0:
            break
    final = Result.of(run)
    result.identical = outcome.rc == 0 and final.same_as(reference)
    result.lost = not result.identical
    return result


# ------------------------------------------------------------------ the other faults


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def one_line_error(outcome: Outcome, rc: int, words: str) -> bool:
    errors = [line for line in outcome.output.splitlines() if line.startswith("error:")]
    return outcome.rc == rc and not outcome.traceback and len(errors) == 1 and words in errors[0]


def can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, check=False)
    return probe.returncode == 0


def in_mount_namespace(script: str, work: Path) -> subprocess.CompletedProcess:
    """Run a shell script under `unshare -m`: its mounts vanish with it."""
    path = work / "script.sh"
    path.write_text("set -u\n" + script)
    return subprocess.run(["unshare", "-m", "sh", str(path)], capture_output=True, text=True, env=ENV,
                          cwd=REPO, timeout=600, check=False)


def shell(cmd: list[str]) -> str:
    return " ".join(f"'{c}'" for c in cmd)


def read_only_checks(work: Path, killed: Path) -> list[Check]:
    mnt, copy = work / "ro", work / "ro-run"
    mnt.mkdir()
    shutil.copytree(killed, copy)
    out1, out2 = work / "ro-out.txt", work / "ro-resume.txt"
    script = f"""
mount -t tmpfs -o ro,size=1m tmpfs {mnt}
{shell(run_command(mnt / 'run'))} > {out1} 2>&1; echo "rc=$?" >> {out1}
umount {mnt}
mount --bind {copy} {mnt} && mount -o remount,bind,ro {mnt}
{shell(difflab('run', '--resume', mnt))} > {out2} 2>&1; echo "rc=$?" >> {out2}
"""
    in_mount_namespace(script, work)
    checks = []
    for name, path, words in (("read-only --out", out1, "cannot create the run folder"),
                              ("--resume of a read-only run", out2, "cannot write into the run folder")):
        text = path.read_text()
        outcome = Outcome(int(text.rsplit("rc=", 1)[1]), text.rsplit("rc=", 1)[0])
        checks.append(Check(name, one_line_error(outcome, 2, words), _first_error(outcome)))
    return checks


def full_disk_check(work: Path, reference: Result, use_mount: bool) -> Check:
    """A disk that fills up at the second checkpoint; then more room and --resume."""
    if not use_mount:
        return _file_size_limit_check(work)
    mnt, out1, out2 = work / "full", work / "full-run.txt", work / "full-resume.txt"
    mnt.mkdir()
    saved = work / "full-run"
    script = f"""
mount -t tmpfs -o size=200k tmpfs {mnt}
{shell(run_command(mnt / 'run'))} > {out1} 2>&1; echo "rc=$?" >> {out1}
ls {mnt}/run/checkpoints >> {out1}
mount -o remount,size=20m {mnt}
{shell(difflab('run', '--resume', mnt / 'run'))} > {out2} 2>&1; echo "rc=$?" >> {out2}
cp -a {mnt}/run {saved}
"""
    in_mount_namespace(script, work)
    text = out1.read_text()
    first = Outcome(int(re.search(r"rc=(\d+)", text)[1]), text.split("rc=")[0])
    kept = text.split("rc=")[1].split()[1:]
    text = out2.read_text()
    resumed = Outcome(int(text.rsplit("rc=", 1)[1]), text)
    ok = (one_line_error(first, 1, "disk full") and kept and resumed.rc == 0 and not resumed.traceback
          and Result.of(saved).same_as(reference))
    return Check("full disk (200 KiB tmpfs), then room and --resume", ok,
                 f"{_first_error(first)} | checkpoints kept: {', '.join(kept) or 'none'} | "
                 f"--resume: exit {resumed.rc}, {'identical' if ok else 'NOT identical'}")


def _file_size_limit_check(work: Path) -> Check:
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    done = subprocess.run(run_command(work / "fsize-run"), capture_output=True, text=True, env=ENV, cwd=REPO,
                          preexec_fn=limit, timeout=300, check=False)
    outcome = Outcome(done.returncode, done.stdout + done.stderr)
    return Check("file size limit (no tmpfs here: RLIMIT_FSIZE 50 kB, EFBIG, not a full disk)",
                 outcome.rc == 1 and not outcome.traceback, _first_error(outcome))


def corrupt_checks(work: Path, killed: Path, reference: Result) -> list[Check]:
    checks = []

    def case(name: str, damage, rc: int, words: str, then=None) -> None:
        run = work / f"corrupt-{len(checks)}"
        shutil.copytree(killed, run)
        damage(run)
        log: list[Outcome] = []
        outcome = finish(difflab("run", "--resume", run), log)
        ok = one_line_error(outcome, rc, words) if rc else outcome.rc == 0 and not outcome.traceback
        detail = _first_error(outcome) if rc else f"exit {outcome.rc}"
        if ok and then is not None:  # do what the message says, and the run must end identical
            then(run)
            again = finish(difflab("run", "--resume", run), log)
            ok = again.rc == 0 and not again.traceback
            detail += f" | then --resume: exit {again.rc}"
        if ok and (rc == 0 or then is not None):
            ok = Result.of(run).same_as(reference)
            detail += ", identical" if ok else ", NOT identical"
        checks.append(Check(name, ok, detail))

    latest = lambda run: max((run / "checkpoints").glob("step_*"))
    case("truncated model.safetensors in the newest checkpoint",
         lambda run: _truncate(latest(run) / "model.safetensors"), 2, "model.safetensors",
         then=lambda run: shutil.rmtree(latest(run)))
    case("garbage state.json", lambda run: (latest(run) / "state.json").write_text("{not json"), 2, "state.json",
         then=lambda run: shutil.rmtree(latest(run)))
    case("garbage recipe.toml", lambda run: (run / "recipe.toml").write_text("[train\nlr = "), 2, "recipe.toml")
    case("a half-written last metrics line", lambda run: _append(run / "metrics.jsonl", '{"step": 9, "lo'), 0, "")
    case("garbage in the lock file", lambda run: (run / ".lock").write_text("\x00garbage"), 0, "")
    return checks


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _append(path: Path, text: str) -> None:
    with path.open("a") as handle:
        handle.write(text)


def _first_error(outcome: Outcome) -> str:
    lines = [line for line in outcome.output.splitlines() if line.startswith("error:")]
    return (lines[0] if lines else f"exit {outcome.rc}, no error line")[:230]


def killed_at_step_8(work: Path) -> Path:
    """A run SIGKILLed just after its step-8 checkpoint: the base the corrupt-file cases damage."""
    run = work / "killed8"
    interruption = Interruption("SIGKILL", "checkpoint step_000008 appears")
    interrupted(run_command(run), run, interruption, lambda r, s: (r / "checkpoints" / "step_000008").exists(), [])
    return run


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder (default: a temporary one, removed)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = args.keep or Path(tempfile.mkdtemp(prefix="difflab-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        log: list[Outcome] = []
        t0 = time.monotonic()
        assert finish(run_command(work / "reference"), log).rc == 0, log[-1].output
        lifetime = time.monotonic() - t0
        reference = Result.of(work / "reference")
        print(f"reference run: {lifetime:.1f} s, {len(reference.losses)} loss rows, {len(reference.weights)} tensors")
        trials = []
        for n in range(1, args.trials + 1):
            trials.append(trial(work, reference, rng, lifetime))
            print(trials[-1].line(n), flush=True)
            if args.keep:  # what each process printed, for a closer look
                (work / f"trial-{n:02d}.log").write_text(
                    "".join(f"=== exit {o.rc}\n{o.output}\n" for o in trials[-1].outputs))
        identical = sum(t.identical for t in trials)
        tracebacks = sum(t.tracebacks for t in trials)
        lost = sum(t.lost for t in trials)
        print(f"\n{len(trials)} tried, {identical} identical, {tracebacks} tracebacks, {lost} data lost")

        killed = killed_at_step_8(work)
        use_mount = can_unshare()
        checks = read_only_checks(work, killed) if use_mount else []
        if not use_mount:
            print("read-only cases skipped: `unshare -m` cannot mount here")
        checks.append(full_disk_check(work, reference, use_mount))
        checks += corrupt_checks(work, killed, reference)
        print("\nother faults:")
        for check in checks:
            print(f"  {'ok  ' if check.passed else 'FAIL'} {check.name}: {check.detail}")
        print(f"{len(checks)} tried, {sum(c.passed for c in checks)} as expected "
              f"(one clear line, no traceback, recovered identical where it can be)")
        print(f"\n{time.monotonic() - started:.0f} s in all")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
