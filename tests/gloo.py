"""Two-process tests on the CPU: a worker run in two spawned processes joined by a gloo group."""

import torch


def run_two_processes(worker, init_file: str, *args) -> dict[int, tuple]:
    """``worker(rank, 2, init_file, queue, *args)`` in two spawned processes; each puts ``(rank, *values)`` (plain
    numbers: a tensor in the queue is fetched from a process that may have exited). Returns ``{rank: values}`` once
    both have exited cleanly."""
    context = torch.multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=worker, args=(rank, 2, init_file, queue, *args)) for rank in range(2)]
    for process in processes:
        process.start()
    results = dict((r[0], r[1:]) for r in (queue.get(timeout=120) for _ in processes))
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return results
