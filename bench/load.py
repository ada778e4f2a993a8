"""Load run: many concurrent streamed runs on the paced offline `echo` model.

    python bench/load.py                      # 200 runs x 50 words at 20 ms/word (issue 4's W3)
    python bench/load.py --runs 500 --nested  # 500 runs, each a parent delegating to a child

Starts `llm-do serve` (SQLite store in a temporary data folder) on a free port with
its own workers folder, opens all streams at once, and reports:

- errors: runs that did not end with run.completed and the exact text;
- completion ÷ ideal: wall time of the whole batch over the time one paced run needs
  (words x delay); 1.0 would mean no run was slowed by the others;
- p50/p99/max gap between consecutive text.delta events of a run, at the client;
- server peak RSS (VmHWM) and RSS per in-flight run ((peak - idle) / runs).

The client runs on the same 2-core machine and costs CPU too; read the figures as an
upper bound of what the service alone would need. Results go to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BASELINE_DELAY = [0]  # set with --baseline: the bare stack paces echo from the request body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_workers(folder: Path, delay_ms: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "paced.worker").write_text(
        f"---\nname: paced\nmodel: echo\nmodel_settings: {{delay_ms: {delay_ms}}}\n---\nEcho.\n"
    )
    (folder / "parent.worker").write_text(
        "---\nname: parent\nmodel: demo\nallow_workers: [paced]\n---\nDelegate to paced.\n"
    )


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def one_run(
    client: httpx.AsyncClient, url: str, index: int, words: int, nested: bool
) -> dict[str, Any]:
    text = " ".join(f"r{index}w{i}" for i in range(words))
    if nested:
        call = {"tool": "worker_call", "args": {"worker": "paced", "input_data": text}}
        name, body = "parent", {"input": {"calls": [call]}}
    else:
        name, body = "paced", {"input": text, "delay_ms": BASELINE_DELAY[0]}
        if not BASELINE_DELAY[0]:
            del body["delay_ms"]
    arrivals: list[float] = []
    child_text: list[str] = []
    end: dict[str, Any] = {}
    data: list[str] = []
    started = time.perf_counter()
    async with client.stream(
        "POST", f"{url}/workers/{name}/run", json=body, headers={"Accept": "text/event-stream"}
    ) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return {"ok": False, "error": f"HTTP {resp.status_code}: {resp.text[:200]}"}
        async for line in resp.aiter_lines():
            if line.startswith("data:"):
                data.append(line[5:].lstrip())
            elif not line and data:
                ev = json.loads("\n".join(data))
                data = []
                kind = ev.get("type", "done" if "output" in ev else "text.delta")
                if kind == "text.delta" and ev.get("worker", "paced") == "paced":
                    arrivals.append(time.perf_counter())
                    child_text.append(ev["delta"])
                elif kind in ("run.completed", "run.failed", "run.cancelled", "done"):
                    end = {"type": "run.completed"} if kind == "done" else ev
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    ok = end.get("type") == "run.completed" and "".join(child_text) == text
    return {
        "ok": ok,
        "error": None if ok else f"ended {end.get('type')}: {end.get('error')}",
        "seconds": time.perf_counter() - started,
        "gaps": gaps,
    }


async def load(url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=args.runs + 10, max_keepalive_connections=args.runs)
    timeout = httpx.Timeout(120, connect=30)
    peak_sampler_stop = asyncio.Event()
    peak = {"hwm": 0}

    async def sample() -> None:
        while not peak_sampler_stop.is_set():
            peak["hwm"] = max(peak["hwm"], rss_kb(pid, "VmRSS"))
            await asyncio.sleep(0.05)

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        # warm up: a few runs so imports, caches and the store are hot
        await asyncio.gather(*(one_run(client, url, -i - 1, 5, args.nested) for i in range(4)))
        idle = rss_kb(pid, "VmRSS")
        sampler = asyncio.create_task(sample())
        cpu_before, client_before = cpu_s(pid), time.process_time()
        started = time.perf_counter()
        results = await asyncio.gather(
            *(one_run(client, url, i, args.words, args.nested) for i in range(args.runs)),
            return_exceptions=True,
        )
        wall = time.perf_counter() - started
        server_cpu, client_cpu = cpu_s(pid) - cpu_before, time.process_time() - client_before
        peak_sampler_stop.set()
        await sampler
    errors = [r if isinstance(r, BaseException) else r["error"] for r in results]
    errors = [str(e) for e in errors if e]
    gaps_ms = sorted(g * 1000 for r in results if isinstance(r, dict) for g in r.get("gaps", []))
    ideal = args.words * args.delay_ms / 1000

    def pct(q: float) -> float:
        return gaps_ms[min(len(gaps_ms) - 1, int(q * len(gaps_ms)))] if gaps_ms else 0.0

    return {
        "server": "bare baseline" if args.baseline else "llm-do service",
        "runs": args.runs,
        "words": args.words,
        "delay_ms": args.delay_ms,
        "nested": args.nested,
        "errors": len(errors),
        "first_errors": errors[:5],
        "wall_s": round(wall, 3),
        "ideal_s": ideal,
        "completion_over_ideal": round(wall / ideal, 3),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_per_delta_us": round(server_cpu / (args.runs * args.words) * 1e6, 1),
        "client_cpu_s": round(client_cpu, 2),
        "gap_ms_p50": round(statistics.median(gaps_ms), 2) if gaps_ms else None,
        "gap_ms_p99": round(pct(0.99), 2),
        "gap_ms_max": round(gaps_ms[-1], 2) if gaps_ms else None,
        "rss_idle_mb": round(idle / 1024, 1),
        "rss_peak_mb": round(max(peak["hwm"], rss_kb(pid, "VmHWM")) / 1024, 1),
        "rss_per_run_kb": round((peak["hwm"] - idle) / args.runs, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=200, help="concurrent streamed runs (200)")
    p.add_argument("--words", type=int, default=50, help="words per run (50)")
    p.add_argument("--delay-ms", type=int, default=20, help="echo pacing per word (20)")
    p.add_argument("--nested", action="store_true", help="each run delegates to a child worker")
    p.add_argument(
        "--baseline", action="store_true", help="load bench/baseline.py (the bare stack) instead"
    )
    args = p.parse_args(argv)
    if args.baseline and args.nested:
        p.error("the bare baseline has no nested workers")

    tmp = Path(tempfile.mkdtemp(prefix="llm-do-load-"))
    write_workers(tmp / "workers", args.delay_ms)
    port = free_port()
    env = {
        **os.environ,
        "LLM_DO_DATA_DIR": str(tmp / "data"),
        "LLM_DO_LOG_LEVEL": "warning",
        "LLM_DO_MAX_RUNS": str(args.runs + 100),
    }
    cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    cmd += ["--workers", str(tmp / "workers")]
    if args.baseline:
        BASELINE_DELAY[0] = args.delay_ms
        cmd = [sys.executable, str(ROOT / "bench" / "baseline.py"), "--port", str(port)]
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print("the service did not start", file=sys.stderr)
                return 1
            time.sleep(0.1)
        kind = "baseline" if args.baseline else "nested" if args.nested else "flat"
        print(f"load: {args.runs} {kind} streamed runs x {args.words} words", file=sys.stderr)
        result = asyncio.run(load(url, server.pid, args))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    for key, value in result.items():
        print(f"{key:24} {value}")
    return 0 if result["errors"] == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
