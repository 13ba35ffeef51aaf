"""Python's side of the `faults` group in bench/Multiprocessing.Bench: a worker SIGKILLs itself under the 4th of 8
tasks (imap, chunksize 1). Reports, as JSON, what multiprocessing.Pool and concurrent.futures.ProcessPoolExecutor
do: the time from the kill to the failed task's exception, the results delivered, and whether the pool still works.
"""
import concurrent.futures
import json
import multiprocessing as mp
import os
import signal
import statistics
import sys
import time

ITEMS = 8
VICTIM = 3


def f(x):
    return x * x


def task(x, died_at):
    if x == VICTIM:
        died_at.value = time.monotonic()
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


_died_at = None


def init(died_at):
    global _died_at
    _died_at = died_at


def task_in_worker(x):
    return task(x, _died_at)


def pool_run(ctx, guard):
    """multiprocessing.Pool: the lost task's result never comes; next(timeout) is the guard."""
    died_at = ctx.Value("d", 0.0, lock=False)
    with ctx.Pool(2, initializer=init, initargs=(died_at,)) as pool:
        pool.map(f, range(4))
        results = []
        outcome = None
        it = pool.imap(task_in_worker, range(ITEMS), chunksize=1)
        for _ in range(ITEMS):
            try:
                results.append(it.next(timeout=guard))
            except mp.TimeoutError:
                outcome = "hung"
                break
            except Exception as e:  # noqa: BLE001 - whatever Python raises is the outcome reported
                outcome = type(e).__name__
                break
        # The pool replaces the dead worker: new work runs, the lost task never completes.
        try:
            later = pool.apply_async(f, (7,)).get(timeout=guard) == 49
        except mp.TimeoutError:
            later = False
        pool.terminate()
    return {"outcome": outcome or "no exception", "delivered": len(results), "usable_after": later}


def executor_run(ctx):
    """ProcessPoolExecutor: BrokenProcessPool for the lost task and every pending one; the executor stays broken."""
    died_at = ctx.Value("d", 0.0, lock=False)
    ex = concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx, initializer=init, initargs=(died_at,))
    try:
        list(ex.map(f, range(4)))
        results = []
        latency = None
        outcome = None
        it = ex.map(task_in_worker, range(ITEMS))
        try:
            for r in it:
                results.append(r)
        except Exception as e:  # noqa: BLE001 - whatever Python raises is the outcome reported
            latency = time.monotonic() - died_at.value
            outcome = type(e).__name__
        try:
            ex.submit(f, 7).result(timeout=10)
            later = True
        except Exception:  # noqa: BLE001 - a broken executor refuses new work
            later = False
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    return {"outcome": outcome or "no exception", "latency_s": latency, "delivered": len(results), "usable_after": later}


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    guard = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    ctx = mp.get_context("spawn")
    out = {"python": sys.version.split()[0], "guard_s": guard}

    pool = pool_run(ctx, guard)
    out["pool_outcome"] = pool["outcome"]
    out["pool_delivered"] = pool["delivered"]
    out["pool_usable_after"] = pool["usable_after"]

    executor = [executor_run(ctx) for _ in range(runs)]
    latencies = [r["latency_s"] for r in executor if r["latency_s"] is not None]
    out["executor_outcome"] = executor[-1]["outcome"]
    out["executor_latency_ms"] = statistics.median(latencies) * 1000 if latencies else None
    out["executor_delivered"] = executor[-1]["delivered"]
    out["executor_usable_after"] = executor[-1]["usable_after"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
