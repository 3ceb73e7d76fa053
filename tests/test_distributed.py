"""Two CPU processes (gloo) against one process on the concatenated batch."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import mean_over_ranks

from kdistill.methods import MethodContext, build_distiller
from kdistill.models import create_model
from kdistill.models.base import Features

WORLD = 2
BATCH = 8  # global; each rank holds BATCH // WORLD samples


def make_dcd():
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=10, in_chans=1)
    teacher = create_model("resnet14", num_classes=10, in_chans=1)
    return build_distiller({"name": "dcd"}, student, teacher, MethodContext((1, 28, 28), 10))


def fixed_features():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 64, generator=generator), torch.randn(BATCH, 64, generator=generator)


def dcd_loss_and_grads(distiller, pooled_s, pooled_t):
    """The DCD term on given pooled features, and the gradients of the method's own parameters."""
    as_features = lambda pooled: Features(logits=torch.zeros(len(pooled), 10), stages=[], pooled=pooled)
    loss = distiller.method_terms(as_features(pooled_s), as_features(pooled_t), {}).losses["dcd"]
    loss.backward()
    params = [distiller.embed_s.weight, distiller.embed_t.weight, distiller.log_scale]
    return loss.detach(), [p.grad.clone() for p in params]


def worker(rank: int, init_file: str, out_file: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    distiller = make_dcd()
    pooled_s, pooled_t = fixed_features()
    local = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    loss, grads = dcd_loss_and_grads(distiller, pooled_s[local], pooled_t[local])
    mean_over_ranks(grads)
    if rank == 0:
        torch.save({"loss": loss, "grads": grads}, out_file)
    dist.destroy_process_group()


def test_gathered_negatives_equal_the_single_process_global_batch(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path / "out.pt")), nprocs=WORLD, join=True)
    distributed = torch.load(tmp_path / "out.pt", weights_only=True)
    loss, grads = dcd_loss_and_grads(make_dcd(), *fixed_features())
    torch.testing.assert_close(distributed["loss"], loss)
    for got, expected in zip(distributed["grads"], grads):
        torch.testing.assert_close(got, expected)
