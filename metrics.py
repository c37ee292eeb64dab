"""Where a training run's figures go, and where its time goes.

Metrics keeps every logged value step by step (the history, which travels in the checkpoint, so a resumed
run continues it) and sends it on to TensorBoard (tensorboard_log) and Weights & Biases (wandb_log), from
rank 0 only. Stopwatch splits the log iteration's time into data, forward+backward and optimizer step.
eval.py --task=history prints a checkpoint's history, and --png=PATH plots it.
"""
import os
import time
from array import array

import torch

import runtime
from configurator import fail

TENSORBOARD = 'tensorboard'  # the event files' folder in out_dir


class Metrics:
    """A run's figures: the history (in the checkpoint), TensorBoard, wandb."""

    def __init__(self, config, ckpt, master):
        """config: the run's settings (out_dir, tensorboard_log, wandb_*); ckpt: the checkpoint resumed,
        or None for a fresh start. Only master (rank 0) writes to TensorBoard and wandb."""
        history = (ckpt or {}).get('history') or {}
        self.history = {k: array('d', v.reshape(-1).tolist()) for k, v in history.items()}  # step, value, ...
        self.wandb_run_id, self.wandb, self.tensorboard = (ckpt or {}).get('wandb_run_id'), None, None
        if not master:
            return
        if config['tensorboard_log']:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                fail("tensorboard_log=True but tensorboard is not installed: pip install tensorboard")
            folder = os.path.join(config['out_dir'], TENSORBOARD)
            if not ckpt and os.path.isdir(folder):  # a fresh start: an earlier run's curves go
                for name in os.listdir(folder):
                    if name.startswith('events.out.tfevents.'):
                        os.remove(os.path.join(folder, name))
            # a resumed run drops what an earlier one logged after its checkpoint (purge_step): TensorBoard's
            # Python reader (tensorboard --load_fast=false) honours it; the default fast one shows both
            self.tensorboard = SummaryWriter(folder, purge_step=ckpt['iter_num'] + 1 if ckpt else None)
        if config['wandb_log']:
            import wandb
            self.wandb = wandb
            self.wandb_run_id = wandb.init(project=config['wandb_project'], name=config['wandb_run_name'],
                                           config=config, id=self.wandb_run_id, resume='allow').id

    def log(self, step, values):
        """Record values ({name: number}; None is left out) at this step, and send them on."""
        values = {k: float(v) for k, v in values.items() if v is not None}
        for k, v in values.items():
            self.history.setdefault(k, array('d')).extend((step, v))
        if self.tensorboard:
            for k, v in values.items():
                self.tensorboard.add_scalar(k, v, step)
        if self.wandb:
            self.wandb.log({'iter': step, **values})

    def state(self):
        """What a checkpoint keeps: {'history': {name: (n, 2) float64 tensor of steps and values}, 'wandb_run_id'}."""
        return {'history': {k: torch.tensor(v, dtype=torch.float64).view(-1, 2) for k, v in self.history.items()},
                'wandb_run_id': self.wandb_run_id}

    def reached(self, val_loss, target, iter_num):
        """Whether val_loss is at or below target (> 0: a time-to-loss run, train.py's stop_at_val_loss);
        if so, log the iteration and the seconds of training steps so far (evaluations not counted)."""
        if not 0 < target or val_loss > target:
            return False
        steps, dts = (self.history.get('time/iter', array('d'))[i::2] for i in (0, 1))
        seconds = sum(dt * (step - prev) for step, prev, dt in zip(steps, [0, *steps], dts))
        runtime.log(f"stop_at_val_loss={target} reached: val loss {val_loss:.4f} at iter {iter_num}, after "
                    f"{seconds:.1f}s of training steps")
        return True

    def close(self):
        if self.tensorboard:
            self.tensorboard.close()
        if self.wandb:
            self.wandb.finish()


def task_figures(figures):
    """tasks.run's {task: {figure: value}} -> {'tasks/task/figure': value}, as Metrics.log takes them."""
    return {f'tasks/{name}/{k}': v for name, f in figures.items() for k, v in f.items()}


class Stopwatch:
    """Splits one iteration's time into phases. start(on) begins an iteration; `with watch('data'):` charges
    its block to 'data' and the time before it to 'fwd+bwd'. Each mark waits for the device, so the split
    counts the device's work, not what was queued; so only the iteration that logs (on=True) does it, and
    the others run without a sync."""

    def __init__(self, device):
        kind = device.split(':')[0]
        self.sync = (torch.cuda.synchronize if kind == 'cuda' else torch.mps.synchronize if kind == 'mps'
                     else lambda: None)
        self.on, self.spent, self.phase = False, {}, None

    def start(self, on):
        self.on, self.spent = on, {}
        if on:
            self.sync()
            self.t = time.perf_counter()

    def _mark(self, phase):
        self.sync()
        now = time.perf_counter()
        self.spent[phase] = self.spent.get(phase, 0.0) + now - self.t
        self.t = now

    def __call__(self, phase):
        self.phase = phase
        return self

    def __enter__(self):
        if self.on:
            self._mark('fwd+bwd')

    def __exit__(self, *exc):
        if self.on:
            self._mark(self.phase)

    def split(self):
        """' (data 0.52ms, fwd+bwd 24.10ms, optim 7.30ms)' for the iteration started last, if on; else ''."""
        spent = sorted(self.spent.items(), key=lambda kv: _ORDER[kv[0]])
        return f" ({', '.join(f'{k} {v * 1000:.2f}ms' for k, v in spent)})" if spent else ''

    def figures(self):
        """The phases' times for Metrics.log: {'time/data': seconds, ...}."""
        return {f'time/{k}': v for k, v in self.spent.items()}


_ORDER = {'data': 0, 'fwd+bwd': 1, 'optim': 2}


# ----------------------------------------------------------------------------- reading a history back
def read_history(ckpt, path):
    """A checkpoint's history -> {name: (steps, values)}; one written before checkpoints kept it fails."""
    if not ckpt or not ckpt.get('history'):
        fail(f"{path} has no metric history: it was written before checkpoints kept one (or by another tool); "
             f"train or resume with this train.py to record one")
    return {k: (v[:, 0].long().tolist(), v[:, 1].tolist()) for k, v in ckpt['history'].items()}


def history_lines(history):
    """The history as a table: a header, then one line per step with every value logged at it."""
    names = sorted(history)
    rows = {}
    for j, name in enumerate(names):
        for step, value in zip(*history[name]):
            rows.setdefault(step, [''] * len(names))[j] = f"{value:.6g}"
    width = [max(len(name), 10) for name in names]
    yield 'step'.rjust(8) + ''.join(f"  {name:>{w}}" for name, w in zip(names, width))
    for step in sorted(rows):
        yield f"{step:8d}" + ''.join(f"  {v:>{w}}" for v, w in zip(rows[step], width))


def plot_history(history, path, title=''):
    """The loss curves (train at each log step, train and val at each evaluation) and the learning rate,
    as a PNG, with matplotlib."""
    try:
        import matplotlib
        matplotlib.use('Agg')  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        fail("--png needs matplotlib, which is not installed: pip install matplotlib (or read the history "
             "with --task=history, or in TensorBoard)")
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), height_ratios=[3, 1], sharex=True)
    for name, label, style in [('train/loss', 'train loss (each log step)', dict(lw=0.8, alpha=0.6)),
                               ('eval/train_loss', 'train loss (evaluation)', dict(marker='o', ms=3)),
                               ('eval/val_loss', 'val loss (evaluation)', dict(marker='o', ms=3))]:
        if name in history:
            ax.plot(*history[name], label=label, **style)
    ax.set_ylabel('loss (nats/token)')
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(title)
    if 'lr' in history:
        ax_lr.plot(*history['lr'], color='gray')
    ax_lr.set_ylabel('learning rate')
    ax_lr.set_xlabel('iteration')
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100, format='png')  # whatever the file's name says
    except OSError as e:
        fail(f"cannot write {path}: {e.strerror or e}")
    plt.close(fig)
