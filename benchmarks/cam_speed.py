"""Per-image CAM latency on this machine (batch 1, 224x224, the model in eval mode).

  (a) bare forward                                      net(x) under no_grad
  (b) forward + CAM + normalise + bilinear to 224       pneumocam's path: the map comes from the same pass
  (c) Grad-CAM                                          forward with grad + one backward to the feature map
  (d) pytorch-grad-cam GradCAM on the same model         hooks on layer4[-1] (needs pneumocam[cam-extra])

The four are timed round-robin (a, b, c, d, a, b, ...) so that machine noise hits them alike, and the
median of each is reported. Targets (issue 6): (b)/(a) <= 1.05; (d)/(b) is reported.

usage: python benchmarks/cam_speed.py [--repeats 40] [--checkpoint CKPT]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pneumocam.explain import class_activation_map, grad_cam, upsample_and_normalize
from pneumocam.model import PneumoniaNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--checkpoint", default=None, help="a trained checkpoint (default: random weights)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.checkpoint:
        from pneumocam.deploy import Predictor

        net = Predictor.from_checkpoint(args.checkpoint).net
    else:
        net = PneumoniaNet("none").eval()
    x = torch.randn(1, 1, 224, 224)

    def bare():
        with torch.no_grad():
            net(x)

    def with_cam():
        with torch.no_grad():
            _, features = net(x)
            upsample_and_normalize(class_activation_map(features, net.fc.weight))

    def with_grad_cam():
        logit, features = net(x)
        upsample_and_normalize(grad_cam(features, logit).detach())

    runs = {"(a) bare forward": bare, "(b) forward + CAM + upsample + normalise": with_cam,
            "(c) Grad-CAM (pneumocam, autograd)": with_grad_cam}
    try:
        from pytorch_grad_cam import GradCAM

        from pneumocam.explain import LogitOnly, pneumonia_targets

        library_cam = GradCAM(model=LogitOnly(net), target_layers=[net.feature_map[-1][-1]])
        runs["(d) pytorch-grad-cam GradCAM"] = lambda: library_cam(input_tensor=x, targets=pneumonia_targets(1))
    except ImportError:
        print("pytorch-grad-cam not installed: (d) skipped (pip install 'pneumocam[cam-extra]')")

    for fn in runs.values():  # warm-up
        for _ in range(3):
            fn()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, {args.repeats} repeats each\n")
    print(f"{'method':<46}{'median ms':>10}{'vs (a)':>8}")
    base = medians["(a) bare forward"]
    for name, ms in medians.items():
        print(f"{name:<46}{ms:>10.2f}{ms / base:>8.3f}")
    b = medians["(b) forward + CAM + upsample + normalise"]
    print(f"\n(b)/(a) = {b / base:.3f} (target <= 1.05)")
    if "(d) pytorch-grad-cam GradCAM" in medians:
        print(f"(d)/(b) = {medians['(d) pytorch-grad-cam GradCAM'] / b:.2f}")


if __name__ == "__main__":
    main()
