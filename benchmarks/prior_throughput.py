"""Batched encode + decode of N=1000 states through every shipped prior, CPU vs CUDA.

For each checkpoint in ``models/`` the script times ``decode(encode(X))`` on a
batch of 1000 states (one device transfer in, one out, as the filters call it)
on the CPU and, when a GPU is present, on CUDA, and reports the ratio.
Writes ``benchmarks/results/prior_throughput.json`` and refreshes the docs.
Run: ``python benchmarks/prior_throughput.py [--n 1000]``; on a GPU machine also
run the contract tests there: ``python -m pytest tests/test_priors_contract.py --device cuda``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tables  # noqa: E402
from _common import best_time, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    import torch

    from latentda import priors

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args(argv)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows, results = [], []
    for pt in sorted((ROOT / "models").glob("*.pt")):
        p = priors.load(pt, "cpu")
        X = p.sample(args.n, seed=0)
        res = {"prior": pt.stem, "family": p.family, "state_dim": p.state_dim,
               "latent_dim": p.latent_dim, "n": args.n,
               "cpu_threads": torch.get_num_threads()}
        for dev in devices:
            q = p.to(dev)

            def call(q=q, X=X, dev=dev):
                q.decode(q.encode(X))
                if dev == "cuda":
                    torch.cuda.synchronize()

            call()
            res[f"{dev}_seconds"] = best_time(call, repeat=3)
        gpu = res.get("cuda_seconds")
        res["speedup_cuda_vs_cpu"] = None if gpu is None else res["cpu_seconds"] / gpu
        results.append(res)
        rows.append([pt.stem, p.family, p.state_dim, p.latent_dim, res["cpu_seconds"],
                     gpu if gpu is not None else "no GPU",
                     res["speedup_cuda_vs_cpu"] or "–"])
        print(rows[-1], flush=True)
    gpu_run = "cuda" in devices
    payload = {
        "title": "Prior throughput: batched encode + decode",
        "script": f"python benchmarks/prior_throughput.py --n {args.n}",
        "devices": devices,
        "gpu": torch.cuda.get_device_name(0) if "cuda" in devices else None,
        "results": results,
        "tables": [{
            "title": f"decode(encode(X)) of {args.n} states, best of 3",
            "columns": ["prior", "family", "n", "k", "CPU s", "CUDA s", "CUDA speed-up"],
            "rows": rows,
            "notes": "WGAN encoding is an Adam projection with a fixed iteration budget, so it "
                     f"costs that many decoder passes. CPU: {torch.get_num_threads()} torch "
                     + ("threads on the machine that ran the CUDA column." if gpu_run
                        else "threads; no GPU on this machine."),
        }],
    }
    print(write_result("prior_throughput", payload))
    make_tables.main([])


if __name__ == "__main__":
    main()
