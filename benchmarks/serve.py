"""The server under load: `tsloc serve` (a real uvicorn process) and 1, 8 and 32 concurrent clients,
each sending the real test images one request after another for a fixed time; requests per second,
latency at the 50th and 99th percentile, errors. Beside it, in the same run, the same ONNX Runtime
model on the same image files decoded in this process as `tsloc predict` runs them (decoding in
threads ahead of batches of 32): the images per second the server is measured against.

    python benchmarks/serve.py --images ../belgiumtsc/Testing [--model belgiumtsc] [--seconds 20]
                               [--clients 1 8 32] [--count 600] [--workers 1]

The clients are one asyncio process (a lean HTTP/1.1 client, `load`), on the same machine as the
server: on 2 CPU cores they take a share of the CPU the server would otherwise have (both CPU times
are printed), so the ratio is a lower bound.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from tsloc.serving.backend import load_backend
from tsloc.serving.predict import IMAGE_SUFFIXES, predict_files
from tsloc.serving.ready import resolve


def in_process(model: str, files: list[Path], rounds: int = 3) -> float:
    """Images per second of `tsloc predict`'s path in this process (the best of `rounds`)."""
    backend = load_backend(resolve(model))
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        with open(os.devnull, "w") as sink:
            predict_files(backend, [str(f) for f in files], out=sink, batch_size=32)
        best = max(best, len(files) / (time.perf_counter() - start))
    return best


def server_pids(pid: int) -> list[int]:
    """The server and its worker processes (--workers N)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(c) for c in children.read_text().split()] if children.exists() else []
    return [pid] + [k for c in kids for k in server_pids(c)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(host: str, port: int, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """`clients` keep-alive connections, each posting the next image as soon as the last answer
    came. A lean HTTP/1.1 client on asyncio streams (requests built once, the answer read by its
    Content-Length), as wrk or hey would load it: httpx here cost more CPU per request than the
    server, on the same 2 cores."""
    requests = [b"POST /v1/predict HTTP/1.1\r\nHost: %s\r\nContent-Type: image/x-portable-pixmap\r\n"
                b"Content-Length: %d\r\n\r\n" % (host.encode(), len(body)) + body for body in bodies]
    latencies, errors = [], 0
    stop = time.perf_counter() + seconds

    async def one(k: int):
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        i = k
        try:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                writer.write(requests[i % len(requests)])
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                answer = await reader.readexactly(length)
                if head[9:12] == b"200" and b'"class_id"' in answer:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors += 1
                i += clients
        finally:
            writer.close()

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(k) for k in range(clients)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    ms = 1000 * np.asarray(latencies)
    return {"clients": clients, "requests": len(latencies), "errors": errors, "seconds": round(elapsed, 2),
            "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
            "client_cpu_s": round(cpu, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="a folder of test images (searched recursively)")
    parser.add_argument("--model", default="belgiumtsc")
    parser.add_argument("--count", type=int, default=600, help="images used (the first, sorted by path)")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:args.count]
    bodies = [f.read_bytes() for f in files]
    baseline = in_process(args.model, files)
    print(f"in process ({len(files)} files, tsloc predict's path): {baseline:.1f} images/s", flush=True)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "tsloc.cli", "serve", "--model", args.model, "--port", str(port),
                               "--workers", str(args.workers), "--max-batch", str(args.max_batch),
                               "--max-wait-ms", str(args.max_wait_ms)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                httpx.get(base + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        asyncio.run(load("127.0.0.1", port, bodies, max(args.clients), 3))  # warm-up
        rows = []
        for clients in args.clients:
            before = sum(cpu_seconds(p) for p in server_pids(server.pid))
            row = asyncio.run(load("127.0.0.1", port, bodies, clients, args.seconds))
            row["server_cpu_s"] = round(sum(cpu_seconds(p) for p in server_pids(server.pid)) - before, 2)
            row["of_in_process"] = round(row["requests_per_s"] / baseline, 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
        batches = httpx.get(base + "/v1/model").json()["batching"]["batches_run"]
    finally:
        server.terminate()
        server.wait(30)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"commit": commit, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "model": args.model,
              "files": len(files), "in_process_images_per_s": round(baseline, 1), "loads": rows,
              "workers": args.workers, "batch_sizes_run": batches}
    print("| clients | requests/s | p50 ms | p99 ms | errors | of in-process images/s | CPU s: server, client |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['clients']} | {r['requests_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} | "
              f"{100 * r['of_in_process']:.0f}% | {r['server_cpu_s']}, {r['client_cpu_s']} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
