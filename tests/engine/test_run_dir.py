"""Run folders across processes: every process must see the folder rank 0 made."""

import pytest
import torch

from mixmask.engine.distributed import Dist
from mixmask.engine.run_dir import RunDirError, check_shared
from tests.gloo import run_two_processes


def _worker(rank: int, world: int, init_file: str, queue, folders: list[str]) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from pathlib import Path

        try:
            check_shared(Path(folders[rank]), Dist(rank=rank, world=2))
            queue.put((rank, "ok"))
        except RunDirError as error:
            queue.put((rank, str(error)))
    finally:
        torch.distributed.destroy_process_group()


def _run(tmp_path, folders: list[str], init: str) -> dict[int, str]:
    return {rank: message for rank, (message,) in run_two_processes(_worker, str(tmp_path / init), folders).items()}


@pytest.mark.slow
def test_every_process_must_see_the_run_folder_of_rank_0(tmp_path):
    """Two gloo processes: with one folder both go on; when rank 1's view of it differs (as on a node without the
    shared file system), both stop with the same one-line reason."""
    shared = tmp_path / "run"
    shared.mkdir()
    (shared / "run.json").write_text('{"task": "pretrain", "created": "2026-12-01 23:00:00"}')
    assert _run(tmp_path, [str(shared), str(shared)], "init1") == {0: "ok", 1: "ok"}
    elsewhere = tmp_path / "node2" / "run"  # what a node without the shared disk would find there: nothing
    elsewhere.mkdir(parents=True)
    results = _run(tmp_path, [str(shared), str(elsewhere)], "init2")
    assert all("1 of 2 processes do not see the run folder" in message for message in results.values())
    assert "rank 1" in results[1] and "does not" in results[1] and "rank 0" in results[0]


def test_one_process_checks_nothing(tmp_path):
    check_shared(tmp_path / "absent", Dist())
