#!/usr/bin/env python3
"""The PyTorch side of `bench/compare.sh`: the same network, weights, losses
and Adam iteration as `farmctl bench`, timed the same way.

One iteration = VGG-19 forward to conv5_1 (average pooling, TensorFlow's SAME
rule), content loss at conv4_2 and style losses at conv1_1..conv5_1 with the
engine's default weights, autograd to the image (the weights are frozen), one
Adam update. Prints one JSON object per size, with the keys `farmctl bench
--json` prints, so the two can be joined.

    python3 bench/torch_bench.py --weights vgg19.safetensors --sizes 333x250 [--bf16]

Not part of the test suite: torch is a 1 GB+ download (`bench/compare.sh`
installs it in its own virtual environment).
"""
import argparse
import json
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

LAYERS = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4",
          "conv4_1", "conv4_2", "conv4_3", "conv4_4", "conv5_1"]
POOL_AFTER = {"conv1_2", "conv2_2", "conv3_4", "conv4_4"}
CONTENT = {"conv4_2": 1.0}
STYLE = {"conv1_1": 0.5, "conv2_1": 1.0, "conv3_1": 1.5, "conv4_1": 3.0, "conv5_1": 4.0}
ALPHA, BETA, LR = 0.01, 1.0, 2.0


def features(weights, x, memory_format):
    """Post-ReLU output of each conv to conv5_1, by name."""
    out = {}
    for name in LAYERS:
        w, b = weights[name]
        x = F.relu(F.conv2d(x, w, b, padding=1))
        out[name] = x
        if name in POOL_AFTER:
            # SAME padding: ceil mode; a partial window averages its valid elements.
            x = F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
    return out


def gram(f):
    _, n, h, w = f.shape
    m = f.reshape(n, h * w).float()
    return m @ m.t()


def losses(feats, content_targets, style_targets):
    content = sum(wt * ((feats[l].float() - content_targets[l]) ** 2).sum() / (4 * content_targets[l].numel())
                  for l, wt in CONTENT.items())
    style = 0
    for l, wt in STYLE.items():
        _, n, h, w = feats[l].shape
        style = style + wt * ((gram(feats[l]) - style_targets[l]) ** 2).sum() / (4 * n * n * (h * w) ** 2)
    return ALPHA * content + BETA * style


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--sizes", default="333x250,800x600")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast, channels-last")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    raw = load_file(args.weights)
    memory_format = torch.channels_last if args.bf16 else torch.contiguous_format
    weights = {}
    for name in LAYERS:
        w = raw[f"{name}.weight"].contiguous(memory_format=memory_format)
        weights[name] = (w.requires_grad_(False), raw[f"{name}.bias"].requires_grad_(False))

    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.lower().split("x"))
        noise = lambda: (torch.rand(1, 3, height, width) * 255 - 128).contiguous(memory_format=memory_format)
        content, style = noise(), noise()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)
        with torch.no_grad(), autocast:
            fc, fs = features(weights, content, memory_format), features(weights, style, memory_format)
            content_targets = {l: fc[l].float() for l in CONTENT}
            style_targets = {l: gram(fs[l]) for l in STYLE}
            del fc, fs
        image = (0.6 * noise() + 0.4 * content).requires_grad_(True)
        opt = torch.optim.Adam([image], lr=LR)
        rows = {"step": [], "forward": [], "loss": [], "backward": []}
        for it in range(args.warmup + args.iters):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with autocast:
                feats = features(weights, image, memory_format)
                t1 = time.perf_counter()
                total = losses(feats, content_targets, style_targets)
            t2 = time.perf_counter()
            total.backward()
            t3 = time.perf_counter()
            opt.step()
            del feats, total
            t4 = time.perf_counter()
            if it >= args.warmup:
                for k, v in zip(rows, (t4 - t0, t1 - t0, t2 - t1, t3 - t2)):
                    rows[k].append(v)
        flops = 0.0
        h, w, c_in = height, width, 3
        for name in LAYERS:
            c_out = weights[name][0].shape[0]
            flops += 2 * 9 * c_in * c_out * h * w
            c_in = c_out
            if name in POOL_AFTER:
                h, w = (h + 1) // 2, (w + 1) // 2
        step = statistics.median(rows["step"])
        print(json.dumps({
            "engine": "pytorch-" + ("bf16" if args.bf16 else "fp32"), "torch": torch.__version__,
            "size": size, "threads": args.threads, "seconds_per_iter": step,
            "forward_seconds": statistics.median(rows["forward"]), "loss_seconds": statistics.median(rows["loss"]),
            "backward_seconds": statistics.median(rows["backward"]), "gflop_per_iter": 2 * flops / 1e9,
            "gflops": 2 * flops / 1e9 / step, "peak_rss_mib": peak_rss_mib(),
        }))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
