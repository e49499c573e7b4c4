"""Run by tests/test_patch_distributed.py under ``torchrun --nproc_per_node 2`` (gloo on CPU).

    trainer: the HF Trainer trains a patched tiny Llama for a few DDP steps; every rank writes its
             connection parameters to OUT/rank<r>.pt
    fsdp2:   fully_shard (FSDP2) each decoder layer and the root of a patched tiny Llama, train a few
             steps with AdamW; every rank writes its loss curve and gathered connection parameters
"""
from __future__ import annotations

import os
import sys

import torch

import reslab
from reslab.models.hf import hf_config
from reslab.patch import patched_connection


def tiny_model(spec: str):
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(hf_config("llama", 40, 16, n_layer=3, d_model=32, n_head=4, d_ff=48))
    reslab.patch(model, spec)
    return model


def batches(n: int, rank: int = 0):
    g = torch.Generator().manual_seed(100 + rank)
    return [torch.randint(0, 40, (2, 16), generator=g) for _ in range(n)]


def run_trainer(spec: str, out: str) -> None:
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments

    class Tokens(Dataset):
        def __init__(self):
            self.data = torch.randint(0, 40, (32, 16), generator=torch.Generator().manual_seed(7))

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            return {"input_ids": self.data[i], "labels": self.data[i]}

    model = tiny_model(spec)
    args = TrainingArguments(output_dir=os.path.join(out, "hf"), max_steps=4, per_device_train_batch_size=2,
                             learning_rate=1e-2, use_cpu=True, ddp_backend="gloo", report_to=[], save_strategy="no",
                             logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    Trainer(model=model, args=args, train_dataset=Tokens()).train()
    rank = int(os.environ.get("RANK", 0))
    conn = patched_connection(model)
    torch.save({k: v.detach().clone() for k, v in conn.state_dict().items()}, os.path.join(out, f"rank{rank}.pt"))


def run_fsdp2(spec: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = tiny_model(spec)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(reslab.param_groups(model, lr=1e-2), lr=1e-2)
    losses = []
    for ids in batches(4, rank):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    conn = patched_connection(model)
    params = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
              for k, v in conn.state_dict().items()}
    torch.save({"losses": losses, "params": params}, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    mode, spec, out = sys.argv[1:4]
    torch.set_num_threads(1)
    {"trainer": run_trainer, "fsdp2": run_fsdp2}[mode](spec, out)
