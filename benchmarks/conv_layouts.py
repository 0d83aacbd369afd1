"""One convolution, contiguous against channels-last: which memory layout oneDNN runs faster, per shape.

    python benchmarks/conv_layouts.py [--convs 512:3 1024:3 2048:3 2560:3 4096:3 2040:3 2048:1 2048:3:12]
                                      [--size 64 128] [--out-channels 512] [--repeats 3] [--threads N]

Each conv is ``Cin:kernel[:dilation]``: ``Conv2d(Cin, --out-channels, kernel, padding=dilation * (kernel // 2),
dilation=dilation, bias=False)`` on a 1 x Cin x H x W map (the default, 64 x 128, is the 1/8 map of a 512 x 1024
image), without autograd. Both layouts of one conv run in this process, alternating after one warm-up call each;
the time is the median of ``--repeats`` calls. This is the measurement behind ``eval.channels_last``'s split
(the backbone channels-last, the heads contiguous; docs/efficiency.md, "Where channels-last pays").
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from nlseg.analysis.runinfo import run_header

DEFAULT_CONVS = ("512:3", "1024:3", "2048:3", "2560:3", "4096:3", "2040:3", "2048:1", "2048:3:12")


def _conv(text: str) -> tuple[int, int, int]:
    """``"2048:3:12"`` -> (2048, 3, 12); the dilation defaults to 1."""
    parts = [int(part) for part in text.split(":")]
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"conv {text!r} is not Cin:kernel[:dilation]")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else 1


def time_layouts(cin: int, kernel: int, dilation: int, size: tuple[int, int], cout: int,
                 repeats: int) -> dict[str, float]:
    """Median seconds of the conv's forward pass, contiguous and channels-last, alternating."""
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False).eval()
    x = torch.randn(1, cin, *size)
    layouts = {
        "contiguous": (conv, x),
        "channels-last": (copy.deepcopy(conv).to(memory_format=torch.channels_last),
                          x.contiguous(memory_format=torch.channels_last)),
    }
    times: dict[str, list[float]] = {name: [] for name in layouts}
    with torch.no_grad():
        for module, inp in layouts.values():
            module(inp)  # warm-up: oneDNN picks and caches its kernel
        for _ in range(repeats):
            for name, (module, inp) in layouts.items():
                start = time.perf_counter()
                module(inp)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--convs", nargs="+", type=_conv, default=[_conv(c) for c in DEFAULT_CONVS],
                        help="Cin:kernel[:dilation] of each conv (default: the table of docs/efficiency.md)")
    parser.add_argument("--size", nargs=2, type=int, default=[64, 128], metavar=("H", "W"), help="map size")
    parser.add_argument("--out-channels", type=int, default=512, help="output channels (default 512)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per layout (median; default 3)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(run_header())
    print(f"\nOne conv Cin -> {args.out_channels} on a 1 x Cin x {args.size[0]} x {args.size[1]} map, no autograd, "
          f"median of {args.repeats}, seconds:\n")
    rows = []
    for cin, kernel, dilation in args.convs:
        seconds = time_layouts(cin, kernel, dilation, tuple(args.size), args.out_channels, args.repeats)
        shape = f"{cin}, {kernel}x{kernel}" + (f" dilation {dilation}" if dilation > 1 else "")
        rows.append((shape, seconds["contiguous"], seconds["channels-last"]))
    print("| Cin, kernel | contiguous | channels-last | channels-last / contiguous |")
    print("|---|---:|---:|---:|")
    for shape, contiguous, last in rows:
        print(f"| {shape} | {contiguous:.3f} | {last:.3f} | {last / contiguous:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
