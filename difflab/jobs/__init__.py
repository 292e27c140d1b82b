"""What the worker runs: training (and what follows it), sampling, step-through, sweeps,
evaluation, inversion and the screens' probes; `launch` names them for the screens so
that torch loads on the worker, never on the UI thread."""
