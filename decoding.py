"""Batch-1 decoding on a CPU: every one-row matmul in the faster of two forms, chosen once per process.

A decoding step at batch 1 multiplies one row by each weight matrix: two FLOPs per weight read, so the
step runs as fast as the weights can be read. Two forms give the same products (to float rounding):
  'plain'  F.linear: one BLAS SGEMM with a single column;
  'split'  the weight's rows cut into one chunk per thread (two with one thread): one batched matmul
           (SGEMM_BATCH), whose chunks run on separate threads.
Which is faster depends on the CPU and its BLAS. With MKL on a 2-core AMD EPYC the plain SGEMM runs
on one thread (its second thread did 3% of the CPU work) and reads weights that are not in the cache
slowly even there: on one thread, the split form ran the decode loop 1.5x faster. So the whole loop
gained more than hot-cache matmul timings show (README, Sampling). On a 2-core Intel Xeon with AMX the
plain form was the faster one.
'auto' times both forms on the model's own one-token step and keeps the faster for the rest of the
process; 'plain' and 'split' force one (benchmarks, exact reruns). They sample the same tokens (tested).

    form = decoding.install(model, 'auto')   # before generate(): 'plain' or 'split', the form in use
"""
import math
import statistics
import time
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

FORMS = ('auto', 'plain', 'split')
_chosen = {}  # (weight shapes, threads, dtype) -> the form the timing chose, once per process


def split_linear(linear, x):
    """linear(x), for one row x as a batched matmul over row chunks of the weight, one per thread (two
    with one thread). Several rows, a GPU, torch.compile, or rows that do not divide: plain F.linear."""
    n, out_features = max(2, torch.get_num_threads()), linear.out_features
    if (x.numel() != linear.in_features or out_features % n or x.device.type != 'cpu'
            or torch.compiler.is_compiling()):
        return F.linear(x, linear.weight, linear.bias)
    w = linear.weight.view(n, out_features // n, linear.in_features)  # (n, out / n, in)
    x_col = x.reshape(1, -1).t().expand(n, -1, -1)  # (n, in, 1): the same row for every chunk
    if linear.bias is None:
        y = torch.bmm(w, x_col)
    else:
        y = torch.baddbmm(linear.bias.view(n, -1, 1), w, x_col)  # (n, out / n, 1)
    return y.view(x.shape[:-1] + (out_features,))


def use(model, form):
    """Compute model's nn.Linear layers in form, 'plain' or 'split' (the split only acts on one row)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            if form == 'split':
                m.forward = partial(split_linear, m)  # an instance attribute: the class stays nn.Linear
            else:
                m.__dict__.pop('forward', None)


@torch.no_grad()
def time_forms(model, rounds=5, min_seconds=0.01):
    """{form: [seconds per one-token forward, one figure per round]}, the forms interleaved. An untimed
    round first sizes each figure to at least min_seconds of steps, so that a moment of another program
    on the CPU is a fraction of it. The random state is left as it was (dropout in training draws)."""
    idx = torch.zeros((1, 1), dtype=torch.long, device=model.lm_head.weight.device)
    times, steps = {'plain': [], 'split': []}, 1
    with torch.random.fork_rng(devices=[]):
        for r in range(rounds + 1):
            for form in times:
                use(model, form)
                t0 = time.perf_counter()
                for _ in range(steps):
                    model(idx)
                times[form].append((time.perf_counter() - t0) / steps)
            if r == 0:  # the warm-up round: its figures go
                steps = max(1, math.ceil(min_seconds / min(t.pop() for t in times.values())))
    return times


def faster(times):
    """The form with the lower median time in times ({form: [seconds, ...]}); 'plain' on a tie."""
    return min(sorted(times), key=lambda form: (statistics.median(times[form]), form != 'plain'))


def choose(model):
    """'split' or 'plain' for model: 'plain' on a GPU, else the faster by time_forms, timed once per
    process for each shape of model and thread count."""
    weight = model.lm_head.weight
    if weight.device.type != 'cpu':
        return 'plain'
    shapes = tuple((m.in_features, m.out_features, m.bias is not None) for m in model.modules()
                   if isinstance(m, nn.Linear))
    key = (shapes, torch.get_num_threads(), weight.dtype)
    if key not in _chosen:
        _chosen[key] = faster(time_forms(model))
    return _chosen[key]


def install(model, form='auto'):
    """Make model's batch-1 decoding use form: 'auto' (chosen by choose), 'plain' or 'split'. Returns
    the form in use. Only the forward of model's nn.Linear modules changes, and only for one row."""
    if form not in FORMS:
        raise ValueError(f"decode_form={form!r}: use one of {', '.join(FORMS)}")
    form = choose(model) if form == 'auto' else form
    use(model, form)
    return form
