"""Python's side of the pipe and queue benchmarks in bench/Multiprocessing.Bench: the same workloads, printed as JSON.

Apart from the 80 MB transfer, one child serves a warm-up and `runs` timed repetitions after it has said it is
ready, so child start is not timed; every repetition checks what arrived.
"""
import array
import json
import multiprocessing as mp
import statistics
import sys
import time

PING_PONG_ROUNDS = 10_000
BLOB_COUNT = 200
BLOB_SIZE = 1 << 20
QUEUE_INTS = 100_000
QUEUE_BLOBS = 10_000
QUEUE_BLOB_SIZE = 1024
N_DOUBLES = 10_000_000
PATIENCE = 60


def echo(conn):
    conn.send(-1)
    while True:
        x = conn.recv()
        if x < 0:
            return
        conn.send(x + 1)


def blob_sender(conn):
    payload = bytearray(bytes(range(256)) * (BLOB_SIZE // 256))
    conn.send(-1)
    while conn.recv() >= 0:
        for i in range(BLOB_COUNT):
            payload[0:4] = i.to_bytes(4, "little")
            conn.send_bytes(payload)


def int_producer(queue, go, reps):
    queue.put(-1)
    for _ in range(reps):
        go.acquire()
        for i in range(QUEUE_INTS):
            queue.put(i)


def blob_producer(queue, go, reps):
    tail = (bytes(range(256)) * (QUEUE_BLOB_SIZE // 256))[4:]
    queue.put(b"")
    for _ in range(reps):
        go.acquire()
        for i in range(QUEUE_BLOBS):
            # A fresh bytes object each time, as the C# side makes a fresh array.
            queue.put(i.to_bytes(4, "little") + tail)


def make_and_send_doubles(conn):
    values = array.array("d", [1.0]) * N_DOUBLES
    conn.send_bytes(values)


def await_ready(ready):
    if not ready:
        raise RuntimeError("the benchmark child's first message was not its ready signal")


def finish(child):
    child.join(PATIENCE)
    if child.exitcode != 0:
        raise RuntimeError(f"benchmark child exited with {child.exitcode}")


def check(got_bytes, expected_bytes, stamps, expected_stamps, bad_tails):
    if got_bytes != expected_bytes or stamps != expected_stamps or bad_tails:
        raise RuntimeError(f"received {got_bytes} bytes (expected {expected_bytes}), stamps summing to {stamps} "
                           f"(expected {expected_stamps}), {bad_tails} messages with a wrong last byte")


def ping_pong_us(ctx, runs):
    mine, theirs = ctx.Pipe()
    child = ctx.Process(target=echo, args=(theirs,))
    child.start()
    theirs.close()
    await_ready(mine.poll(PATIENCE) and mine.recv() == -1)
    samples = []
    expected = PING_PONG_ROUNDS * (PING_PONG_ROUNDS + 1) // 2
    for _ in range(runs + 1):
        total = 0
        t = time.perf_counter()
        for i in range(PING_PONG_ROUNDS):
            mine.send(i)
            total += mine.recv()
        samples.append((time.perf_counter() - t) / PING_PONG_ROUNDS * 1e6)
        if total != expected:
            raise RuntimeError(f"ping-pong replies summed to {total}, not {expected}")
    mine.send(-1)
    finish(child)
    mine.close()
    return statistics.median(samples[1:])


def pipe_blobs_mib_per_s(ctx, runs):
    mine, theirs = ctx.Pipe()
    child = ctx.Process(target=blob_sender, args=(theirs,))
    child.start()
    theirs.close()
    await_ready(mine.poll(PATIENCE) and mine.recv() == -1)
    samples = []
    for r in range(runs + 1):
        got_bytes = stamps = bad_tails = 0
        t = time.perf_counter()
        mine.send(r)
        for _ in range(BLOB_COUNT):
            message = mine.recv_bytes()
            got_bytes += len(message)
            stamps += int.from_bytes(message[:4], "little")
            if message[-1] != (BLOB_SIZE - 1) & 0xFF:
                bad_tails += 1
        samples.append(time.perf_counter() - t)
        check(got_bytes, BLOB_COUNT * BLOB_SIZE, stamps, BLOB_COUNT * (BLOB_COUNT - 1) // 2, bad_tails)
    mine.send(-1)
    finish(child)
    mine.close()
    return BLOB_COUNT * BLOB_SIZE / (1 << 20) / statistics.median(samples[1:])


def int_transfer_seconds(ctx, runs, queue, first):
    go = ctx.Semaphore(0)
    child = ctx.Process(target=int_producer, args=(queue, go, runs + 1))
    child.start()
    await_ready(first() == -1)
    samples = []
    expected = QUEUE_INTS * (QUEUE_INTS - 1) // 2
    get = queue.get
    for _ in range(runs + 1):
        total = 0
        t = time.perf_counter()
        go.release()
        for _ in range(QUEUE_INTS):
            total += get()
        samples.append(time.perf_counter() - t)
        if total != expected:
            raise RuntimeError(f"the queue's items summed to {total}, not {expected}")
    finish(child)
    return statistics.median(samples[1:])


def queue_blob_seconds(ctx, runs):
    queue, go = ctx.Queue(), ctx.Semaphore(0)
    child = ctx.Process(target=blob_producer, args=(queue, go, runs + 1))
    child.start()
    await_ready(len(queue.get(timeout=PATIENCE)) == 0)
    samples = []
    for _ in range(runs + 1):
        got_bytes = stamps = bad_tails = 0
        t = time.perf_counter()
        go.release()
        for _ in range(QUEUE_BLOBS):
            item = queue.get()
            got_bytes += len(item)
            stamps += int.from_bytes(item[:4], "little")
            if item[-1] != (QUEUE_BLOB_SIZE - 1) & 0xFF:
                bad_tails += 1
        samples.append(time.perf_counter() - t)
        check(got_bytes, QUEUE_BLOBS * QUEUE_BLOB_SIZE, stamps, QUEUE_BLOBS * (QUEUE_BLOBS - 1) // 2, bad_tails)
    finish(child)
    return statistics.median(samples[1:])


def doubles_through_pipe_ms(ctx):
    t = time.perf_counter()
    mine, theirs = ctx.Pipe()
    child = ctx.Process(target=make_and_send_doubles, args=(theirs,))
    child.start()
    theirs.close()
    if not mine.poll(PATIENCE):
        raise RuntimeError("the child sent nothing")
    data = mine.recv_bytes()
    total = sum(memoryview(data).cast("d"))
    finish(child)
    ms = (time.perf_counter() - t) * 1e3
    mine.close()
    if len(data) != N_DOUBLES * 8 or total != N_DOUBLES:
        raise RuntimeError(f"received {len(data)} bytes summing to {total}, not {N_DOUBLES * 8} bytes summing to {N_DOUBLES}")
    return ms


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    ctx = mp.get_context("spawn")
    out = {"python": sys.version.split()[0]}
    out["pipe_ping_pong_us"] = ping_pong_us(ctx, runs)
    out["pipe_bytes_1mib_mib_per_s"] = pipe_blobs_mib_per_s(ctx, runs)
    queue = ctx.Queue()
    out["queue_100k_ints_per_s"] = QUEUE_INTS / int_transfer_seconds(ctx, runs, queue, lambda: queue.get(timeout=PATIENCE))
    simple = ctx.SimpleQueue()  # get() takes no timeout
    out["simple_queue_100k_ints_per_s"] = QUEUE_INTS / int_transfer_seconds(ctx, runs, simple, simple.get)
    seconds = queue_blob_seconds(ctx, runs)
    out["queue_1kib_msgs_per_s"] = QUEUE_BLOBS / seconds
    out["queue_1kib_mib_per_s"] = QUEUE_BLOBS * QUEUE_BLOB_SIZE / (1 << 20) / seconds
    doubles_through_pipe_ms(ctx)  # warm-up, as on the C# side
    out["pipe_80mb_child_send_parent_sum_ms"] = statistics.median(doubles_through_pipe_ms(ctx) for _ in range(runs))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
