"""Python's side of bench/Multiprocessing.Bench: the same workloads, printed as JSON on stdout."""
import json
import multiprocessing as mp
import os
import statistics
import sys
import time


def empty():
    pass


def idle(ready_path):
    with open(ready_path, "w") as f:
        f.write("ready")
    time.sleep(3600)


def start_join_ms(ctx, runs):
    for _ in range(3):  # warm-up, as on the C# side
        p = ctx.Process(target=empty)
        p.start()
        p.join()
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        p = ctx.Process(target=empty)
        p.start()
        p.join()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def idle_child_mib(ctx, scratch):
    ready = os.path.join(scratch, "py-ready")
    p = ctx.Process(target=idle, args=(ready,))
    p.start()
    deadline = time.monotonic() + 30
    while not os.path.exists(ready):
        if time.monotonic() > deadline:
            raise TimeoutError("idle child never became ready")
        time.sleep(0.005)
    try:
        return rss_mib(p.pid)
    finally:
        p.kill()
        p.join()
        os.remove(ready)


if __name__ == "__main__":
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    scratch = sys.argv[2] if len(sys.argv) > 2 else "/tmp"
    spawn = mp.get_context("spawn")
    print(json.dumps({
        "python": sys.version.split()[0],
        "start_join_spawn_ms": start_join_ms(spawn, runs),
        "start_join_forkserver_ms": start_join_ms(mp.get_context("forkserver"), runs),
        "idle_child_spawn_mib": idle_child_mib(spawn, scratch),
    }))
