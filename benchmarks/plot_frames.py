"""Frame times of the live curves under a synthetic stream of 100k points (DESIGN.md §4 "Live plots").

    QT_QPA_PLATFORM=offscreen python benchmarks/plot_frames.py [--points 100000] [--batch 1000]

Appends metrics in batches as a fast run would (loss, eval loss every 100 steps, lr, grad norm, tokens/s, GPU
memory), triggers the ~10 Hz redraw and forces a paint, and reports the cost of each redraw+paint ("frame") as the
series grow. A frame must stay well under the 100 ms redraw interval for the GUI to keep up."""

from __future__ import annotations

import argparse
import math
import statistics
import time

from PySide6.QtWidgets import QApplication


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000, help="metrics events between two frames")
    parser.add_argument("--size", default="1400x800")
    args = parser.parse_args()
    app = QApplication.instance() or QApplication([])
    from app.views.plots import CurvesView

    view = CurvesView()
    w, h = map(int, args.size.split("x"))
    view.resize(w, h)
    view.show()
    app.processEvents()
    frames: list[tuple[int, float, float]] = []
    append_s = 0.0
    step = 0
    while step < args.points:
        t0 = time.perf_counter()
        for _ in range(args.batch):
            step += 1
            event = {"step": step, "loss": 2.0 * math.exp(-step / 30000) + 0.1 * math.sin(step / 7.0),
                     "learning_rate": 2e-4 * (1 - step / args.points), "grad_norm": 1 + 0.5 * math.cos(step / 13.0),
                     "tokens_per_second": 5000 + 100 * math.sin(step / 50.0), "gpu_allocated_gib": 10.0,
                     "gpu_reserved_gib": 12.0, "gpu_peak_gib": 11.0}
            if step % 100 == 0:
                event["eval_loss"] = event["loss"] + 0.05
            view.add_metrics(event)
        t1 = time.perf_counter()
        view.redraw()
        view.graphics.viewport().repaint()  # the paint the timer's redraw leads to (synchronous)
        t2 = time.perf_counter()
        append_s += t1 - t0
        frames.append((step, (t2 - t1) * 1000, (t1 - t0) * 1000))
    view.set_log_y(True)
    t0 = time.perf_counter()
    view.graphics.viewport().repaint()
    app.processEvents()
    log_ms = (time.perf_counter() - t0) * 1000
    times = [f[1] for f in frames]
    tail = [f[1] for f in frames if f[0] > args.points * 0.9]
    print(f"points per series: {args.points:,} (x8 series), frames: {len(frames)}, batch {args.batch} events/frame")
    print(f"append: {1e6 * append_s / args.points:.1f} µs per metrics event")
    print(f"frame (redraw + paint): median {statistics.median(times):.1f} ms, p95 "
          f"{sorted(times)[int(0.95 * len(times)) - 1]:.1f} ms, max {max(times):.1f} ms")
    print(f"frame at 90-100k points: median {statistics.median(tail):.1f} ms, max {max(tail):.1f} ms")
    print(f"switch to log-y at {args.points:,} points: {log_ms:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
