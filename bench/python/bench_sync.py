"""Python's side of the synchronization and shared-memory benchmarks in bench/Multiprocessing.Bench."""
import array
import json
import multiprocessing as mp
import statistics
import sys
import time

N_DOUBLES = 10_000_000


def locked_increments(lock, value, go, done, n):
    go.wait()
    for _ in range(n):
        with lock:
            value.value += 1
    done.release()


def pong(ping, pongs, n):
    for _ in range(n):
        ping.wait()
        ping.clear()
        pongs.set()


def fill(arr):
    view = memoryview(arr).cast("B").cast("d")
    view[:] = array.array("d", [1.0]) * len(view)


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    ctx = mp.get_context("spawn")
    out = {"python": sys.version.split()[0]}

    lock = ctx.Lock()
    n = 1_000_000
    t = time.perf_counter()
    for _ in range(n):
        lock.acquire()
        lock.release()
    out["lock_pairs_per_s"] = n / (time.perf_counter() - t)

    samples = []
    for _ in range(runs):
        # Python's fastest form of the workload: a raw value and a plain lock. A synchronized Value would lock again
        # inside every .value read and write.
        value, lock = ctx.RawValue("i", 0), ctx.Lock()
        go, done = ctx.Event(), ctx.Semaphore(0)
        children = [ctx.Process(target=locked_increments, args=(lock, value, go, done, 50_000)) for _ in range(2)]
        for c in children:
            c.start()
        t = time.perf_counter()
        go.set()
        done.acquire()
        done.acquire()
        samples.append(time.perf_counter() - t)
        for c in children:
            c.join()
        assert value.value == 100_000, value.value
    out["contended_ops_per_s"] = 100_000 / statistics.median(samples)

    rounds = 10_000
    ping, pongs = ctx.Event(), ctx.Event()
    child = ctx.Process(target=pong, args=(ping, pongs, rounds))
    child.start()
    t = time.perf_counter()
    for _ in range(rounds):
        ping.set()
        pongs.wait()
        pongs.clear()
    out["event_ping_pong_us"] = (time.perf_counter() - t) / rounds * 1e6
    child.join()

    samples, alloc = [], []
    for _ in range(runs):
        t = time.perf_counter()
        arr = ctx.RawArray("d", N_DOUBLES)
        alloc.append(time.perf_counter() - t)
        p = ctx.Process(target=fill, args=(arr,))
        p.start()
        p.join()
        total = sum(memoryview(arr).cast("B").cast("d"))
        samples.append(time.perf_counter() - t)
        assert total == N_DOUBLES, total
        del arr
    out["array_80mb_child_fill_parent_sum_ms"] = statistics.median(samples) * 1e3
    out["array_80mb_alloc_ms"] = statistics.median(alloc) * 1e3
    print(json.dumps(out))


if __name__ == "__main__":
    main()
