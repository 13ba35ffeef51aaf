"""Python's side of the manager benchmarks in bench/Multiprocessing.Bench: the same workloads, printed as JSON.

A child does the operations through proxies and times its own loop, one warm-up and `runs` timed repetitions,
and sends each repetition's seconds back; the parent checks what the child wrote.
"""
import json
import multiprocessing as mp
import statistics
import sys
import time
from multiprocessing.managers import SyncManager

DICT_ROUNDS = 5_000
LIST_APPENDS = 10_000


def dict_worker(d, conn, reps):
    for _ in range(reps):
        start = time.perf_counter()
        for i in range(DICT_ROUNDS):
            d[i] = i
            if d[i] != i:
                raise RuntimeError("wrong value")
        conn.send(time.perf_counter() - start)


def list_worker(lst, conn, reps):
    for _ in range(reps):
        del lst[:]
        start = time.perf_counter()
        for i in range(LIST_APPENDS):
            lst.append(i)
        conn.send(time.perf_counter() - start)


def measure(ctx, target, proxy, runs):
    mine, theirs = ctx.Pipe()
    child = ctx.Process(target=target, args=(proxy, theirs, runs + 1))
    child.start()
    theirs.close()
    samples = [mine.recv() for _ in range(runs + 1)][1:]
    child.join()
    return statistics.median(samples)


def run_on(ctx, manager, runs, out, suffix):
    d = manager.dict()
    out["dict_set_get_ops_per_s" + suffix] = 2 * DICT_ROUNDS / measure(ctx, dict_worker, d, runs)
    if len(d) != DICT_ROUNDS:
        raise RuntimeError("dict incomplete")
    lst = manager.list()
    out["list_append_ops_per_s" + suffix] = LIST_APPENDS / measure(ctx, list_worker, lst, runs)
    if len(lst) != LIST_APPENDS:
        raise RuntimeError("list incomplete")


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    ctx = mp.get_context("spawn")
    out = {"python": sys.version.split()[0]}
    with ctx.Manager() as manager:
        run_on(ctx, manager, runs, out, "")
    tcp = SyncManager(address=("127.0.0.1", 0), authkey=b"bench-key", ctx=ctx)
    tcp.start()
    try:
        run_on(ctx, tcp, runs, out, "_tcp")
    finally:
        tcp.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
