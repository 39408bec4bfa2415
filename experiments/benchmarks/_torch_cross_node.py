"""PyTorch side of the cross-node attention benchmark (a worker process; not a library module).

The same computation as ``jaxfm.ops.cross_node_attention`` written the way a PyTorch user would:
gather per edge, ``torch.nn.functional.scaled_dot_product_attention`` (batch = edges), then
``index_add_`` to the receivers and a division by the in-degree; forward + backward.

Protocol (JSON lines on stdin/stdout, driven by ``cross_node_attention.py``):
``{"cmd": "setup", "config": {...}}`` -> ``{"ok": true, ...}``;
``{"cmd": "run", "n": k}`` -> ``{"times": [...]}``; ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cross_node_attention import make_graph  # numpy only: the same graph as the JAX worker


class TorchCrossNode:
    def __init__(self, cfg, device):
        senders, receivers, q, k, v = make_graph(cfg)
        self.n = cfg["N"]
        self.s = torch.from_numpy(senders).to(device)
        self.r = torch.from_numpy(receivers).to(device)
        self.q, self.k, self.v = (
            torch.from_numpy(x).to(device).requires_grad_(True) for x in (q, k, v)
        )
        deg = torch.zeros(self.n, device=device).index_add_(
            0, self.r, torch.ones(self.r.shape[0], device=device)
        )
        self.inv_deg = 1.0 / deg.clamp(min=1.0)
        self.device = device

    def step(self):
        for x in (self.q, self.k, self.v):
            x.grad = None
        # [N, L, H, Dh] -> [N, H, L, Dh], the layout scaled_dot_product_attention takes
        qh, kh, vh = (x.transpose(1, 2) for x in (self.q, self.k, self.v))
        msg = F.scaled_dot_product_attention(qh[self.r], kh[self.s], vh[self.s])  # [E, H, L, Dh]
        out = torch.zeros((self.n, *msg.shape[1:]), device=self.device, dtype=msg.dtype)
        out = out.index_add(0, self.r, msg) * self.inv_deg[:, None, None, None]
        (0.5 * (out * out).sum()).backward()  # needs the forward output, like a real loss
        if self.device != "cpu":
            torch.cuda.synchronize()


def dense_rate(device, size=2048, reps=5):
    a = torch.ones(size, size, device=device)
    a @ a
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ a
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 2 * size**3 / float(np.median(times)) / 1e9


def main():
    device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    bench = None
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "setup":
            bench = TorchCrossNode(msg["config"], device)
            bench.step()  # warm-up
            reply = {
                "ok": True,
                "threads": torch.get_num_threads(),
                "version": torch.__version__,
                "dense_gflops": dense_rate(device),
            }
        elif msg["cmd"] == "run":
            times = []
            for _ in range(msg["n"]):
                t = time.perf_counter()
                bench.step()
                times.append(time.perf_counter() - t)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            reply = {"times": times, "max_rss_mb": rss}
        else:
            break
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
