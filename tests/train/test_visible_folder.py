"""Every process of a run must see the output folder the main process writes: two gloo processes that
look at different folders (as two nodes without a shared filesystem would) are refused, naming the key."""
import os

import pytest
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from kdistill.base.errors import ConfigError
from kdistill.train.distributed import Dist, check_visible


def _worker(rank: int, folders: list, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch_dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        check_visible(Dist("ddp", 2, rank), folders[rank])
        results[rank] = "ok"
    except ConfigError as e:
        results[rank] = str(e)
    finally:
        torch_dist.destroy_process_group()


def _run(folders) -> list:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().list([None, None])
    mp.spawn(_worker, args=(folders, port, results), nprocs=2)
    return list(results)


@pytest.mark.parametrize("shared", [True, False])
def test_every_process_must_see_the_output_folder(tmp_path, shared):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    results = _run([str(a), str(a if shared else b)])
    if shared:
        assert results == ["ok", "ok"]
    else:
        assert all("output_dir=" in r and "1 of the 2 processes cannot see" in r for r in results), results
    assert list(a.iterdir()) == [] and list(b.iterdir()) == []  # the marker is gone either way
